"""The one seam to the broker: a video's message sent by task name, and its row moved to queued."""

from __future__ import annotations

import logging

from flask import current_app

from celeryconfig import DELIVER_TASK, OPTIMIZE_TASK, PROCESS_TASK
from domain import jobs, optimize, timing

logger = logging.getLogger(__name__)


class EnqueueError(Exception):
    """The broker did not take the message."""


def enqueue_video(video_id: str, task_id: str) -> None:
    """Publish the processing task for ``video_id``; raise ``EnqueueError`` when SQS is unreachable."""
    celery = current_app.extensions["celery"]
    try:
        with timing.waiting("sqs"):
            celery.send_task(PROCESS_TASK, args=[video_id], task_id=task_id)
    except Exception as exc:  # kombu and botocore raise many kinds; all mean "not queued"
        logger.warning("enqueue failed", extra={"video_id": video_id, "task_id": task_id, "error": repr(exc)})
        raise EnqueueError(str(exc)) from exc
    logger.info("enqueued", extra={"video_id": video_id, "task_id": task_id})


SQS_MAX_DELAY = 900  # DelaySeconds' maximum: a longer wait is made of several hops (tasks/webhooks.py)


def send_delivery(delivery_id: str, delay: float = 0) -> None:
    """Send a webhook delivery's message to the webhooks queue, held back ``delay`` seconds (at most 15 min)."""
    celery = current_app.extensions["celery"]
    seconds = max(0, min(SQS_MAX_DELAY, int(-(-delay // 1))))
    options = {"delay_seconds": seconds} if seconds else {}
    celery.send_task(DELIVER_TASK, args=[delivery_id], **options)


def publish(video_id: str, task_id: str) -> bool:
    """Send a committed ``uploaded`` row's message, then move the row to ``queued``; return whether it moved.

    Every enqueue goes through here: the upload routes', the owner's retry, the sweeper's. The
    row must be committed first (a worker must find it) and the caller commits the move; it is
    conditional, as a fast worker may have moved the row on already. Raises ``EnqueueError``
    when SQS did not take the message: the row stays ``uploaded`` for the sweeper.
    """
    enqueue_video(video_id, task_id)
    return jobs.enqueued(video_id)


def send_optimize(video_id: str) -> bool:
    """Send a published video's optimize message, then move its stage to ``queued``; the caller commits.

    Raises ``EnqueueError`` when SQS did not take it: the stage stays ``pending`` for the sweeper.
    """
    celery = current_app.extensions["celery"]
    try:
        celery.send_task(OPTIMIZE_TASK, args=[video_id])
    except Exception as exc:
        logger.warning("optimize not sent", extra={"video_id": video_id, "error": repr(exc)})
        raise EnqueueError(str(exc)) from exc
    return optimize.sent(video_id)
