"""The webhook delivery task: one POST of one event to one endpoint, on the webhooks queue.

The webhook workers read only that queue (``celery -A tasks worker -Q <WEBHOOK_QUEUE_NAME>
-P threads``): deliveries wait on receivers, not on the CPU, and never take a video worker's
time. Each message is acknowledged when its task returns (``acks_late``); a worker that dies
during a POST leaves its message to come back after the visibility timeout, and the
delivery's lease (``webhooks.claim``) lets that redelivery try again.

A retry is a new message held back by SQS (``DelaySeconds``, at most 15 minutes): a longer
wait is several hops, each of which finds the delivery not yet due and sends itself on.
"""

from __future__ import annotations

import time

from celery import Task, shared_task
from celery.utils.log import get_task_logger

from celeryconfig import DELIVER_TASK
from domain import egress, webhooks
from domain.extensions import db, get_settings
from domain.models import WebhookAttempt, WebhookDelivery, utcnow
from domain.queue import send_delivery
from ops.logs import log_context
from ops.prometheus import WEBHOOK_ATTEMPTS, WEBHOOK_SECONDS

logger = get_task_logger(__name__)
LEASE_MARGIN = 5.0  # seconds past the POST's timeout before another worker may try the delivery


def _later(delivery_id: str, delay: float, why: str) -> str:
    """Send the delivery's message again, ``delay`` seconds on; the sweeper's relay covers a failed send."""
    try:
        send_delivery(delivery_id, delay)
    except Exception as exc:
        logger.warning("not sent on; the sweeper will", extra={"error": repr(exc)})
    return why


@shared_task(name=DELIVER_TASK, bind=True, ignore_result=True)
def deliver_webhook(self: Task, delivery_id: str) -> str:
    """Make the delivery's next attempt when it is due; return what happened (for the log and the tests)."""
    config = get_settings()
    with log_context(task_id=self.request.id, delivery_id=delivery_id):
        delivery = db.session.get(WebhookDelivery, delivery_id)
        if delivery is None or delivery.status != webhooks.PENDING:
            db.session.commit()
            logger.info("nothing to do", extra={"reason": delivery.status if delivery else "deleted"})
            return "skipped"
        event, endpoint = delivery.event, delivery.endpoint
        with log_context(video_id=delivery.video_id, event_id=event.id, endpoint_id=endpoint.id):
            now = utcnow()
            if endpoint.disabled_at is not None:
                webhooks.fail(delivery, now)
                db.session.commit()
                logger.warning("failed: the endpoint is disabled")
                return "disabled"
            due = delivery.next_attempt_at or now
            if (wait := (due - now).total_seconds()) > 0:
                db.session.commit()
                return _later(delivery_id, wait, "waiting")
            if (earlier := webhooks.behind(delivery)) is not None:  # an earlier event of this video goes first
                db.session.commit()
                wait = max(config.WEBHOOK_RETRY_SECONDS, (earlier - now).total_seconds())
                return _later(delivery_id, wait, "behind")
            # What the POST needs, read now: no transaction stays open while the receiver takes its time.
            body, url, keys, event_id = (
                event.body.encode(),
                endpoint.url,
                webhooks.signing_secrets(endpoint, now),
                event.id,
            )
            claimed = webhooks.claim(delivery_id, config.WEBHOOK_TIMEOUT_SECONDS + LEASE_MARGIN)
            if claimed is None:
                db.session.rollback()
                return "taken"
            attempt, number = claimed
            db.session.flush()
            attempt_id = attempt.id
            db.session.commit()  # the attempt is on the log before the POST: a worker that dies leaves it there
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "videoproc-webhooks/1",
                "Videoproc-Event-Id": event_id,
                "Videoproc-Signature": webhooks.signature_header(keys, int(time.time()), body),
            }
            start = time.monotonic()
            status, error = None, None
            try:
                answer = egress.post(url, body, headers, config.WEBHOOK_TIMEOUT_SECONDS, config.WEBHOOK_ALLOW_LOCAL)
                status = answer.status
            except egress.Refused as exc:
                error = f"refused: {exc}"
            except OSError as exc:
                error = str(exc) or type(exc).__name__
            seconds = time.monotonic() - start
            mine = db.session.get(WebhookAttempt, attempt_id)
            if mine is None:  # the endpoint was removed during the POST, its deliveries with it
                db.session.commit()
                logger.info("the endpoint was removed during the attempt", extra={"status": status})
                return "removed"
            delivery = webhooks.holds(delivery_id, number)  # locked until the commit below
            if delivery is None:  # a later attempt took over (a redelivery, or this one outlived its lease)
                webhooks.record_attempt(mine, status, error, seconds)
                db.session.commit()
                logger.warning("superseded: a later attempt settles the delivery", extra={"status": status})
                return "superseded"
            delay = webhooks.settle(delivery, mine, status, error, seconds, config)
            outcome = delivery.status if delivery.status != webhooks.PENDING else "retrying"
            db.session.commit()
            WEBHOOK_ATTEMPTS.labels(outcome).inc()
            extra = {"status": status, "error": error, "attempt": delivery.attempts}
            if outcome == webhooks.SUCCEEDED:
                WEBHOOK_SECONDS.observe((utcnow() - delivery.created_at).total_seconds())
                logger.info("delivered", extra=extra)
                return outcome
            if delay is None:
                logger.warning("delivery failed for good", extra=extra)
                return outcome
            logger.warning("not acknowledged; will retry", extra={**extra, "delay": delay})
            return _later(delivery_id, delay, outcome)
