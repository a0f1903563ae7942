"""The one seam from the web side to the broker: enqueue a video by task name."""

from __future__ import annotations

import logging

from flask import current_app

from celeryconfig import PROCESS_TASK
from domain import timing

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
