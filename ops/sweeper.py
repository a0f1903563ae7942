"""Re-enqueue what the queue lost: uploads never queued, jobs whose worker died, messages that vanished.

Also the housekeeping of uploads: direct uploads left unfinished past their deadline are
aborted, and idempotency keys older than ``IDEMPOTENCY_KEY_SECONDS`` removed; and of webhooks:
deliveries whose message was lost are sent again, old events deleted; and of the optimize stage:
one whose message was not sent, or was lost, is sent again.

Safe on several machines at once: each row is taken with a conditional UPDATE (a lease
on ``updated_at``) before it is enqueued, so only one sweeper sends its message; and a
message too many is harmless, as the task's claim lets only one delivery run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import and_, delete, or_, select
from sqlalchemy.exc import SQLAlchemyError

from config import Settings
from domain import direct, jobs, optimize, quotas, webhooks
from domain.extensions import db
from domain.models import IdempotencyKey, Status, Video, utcnow
from domain.queue import EnqueueError, publish, send_optimize
from domain.storage import get_storage
from ops import reconcile

logger = logging.getLogger(__name__)


@dataclass
class SweepReport:
    """What one sweep did."""

    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)  # direct uploads never completed
    dead_lettered: list[str] = field(default_factory=list)  # queued rows whose message died: failed, retryable
    orphans: list[str] = field(default_factory=list)  # videos with objects and no row: objects deleted
    stale_outputs: list[str] = field(default_factory=list)  # a published video's outputs its row no longer names
    aborted: list[str] = field(default_factory=list)  # multipart uploads with no row
    relayed: list[str] = field(default_factory=list)  # webhook deliveries whose message was lost: sent again
    optimize_sent: list[str] = field(default_factory=list)  # optimize stages whose message was not sent, or lost
    unreachable: bool = False


def requeue(
    video_id: str,
    sources: tuple[Status, ...],
    lease_older_than: timedelta | None = None,
    reset_attempts: bool = False,
) -> bool:
    """Take the row (if still in ``sources``), give it a new task id and enqueue it; return success.

    Commits the caller's unit of work with the renewed row before the message is sent (a worker
    must find the row), then the move to ``queued``. The row stays ``uploaded`` until the message
    is sent, so a failed enqueue leaves it for the next sweep.
    """
    task_id = jobs.renew(video_id, sources, lease_older_than, reset_attempts)
    db.session.commit()
    if task_id is None:
        return False
    publish(video_id, task_id)  # raises EnqueueError: the row stays uploaded
    db.session.commit()
    return True


def _reconcile(settings: Settings, report: SweepReport, storage: bool) -> list[str]:
    """Fail the rows SQS dead-lettered, clean S3 of what has no row; return the queued rows whose message is lost."""
    lost: list[str] = []
    try:
        report.dead_lettered = reconcile.dead_lettered(settings)
        db.session.commit()
        lost = reconcile.lost_messages(settings)
        db.session.commit()
        if storage:
            report.orphans = reconcile.orphan_objects(get_storage(), settings)
            db.session.commit()
            report.aborted = reconcile.orphan_uploads(get_storage(), settings)
            db.session.commit()
            report.stale_outputs = reconcile.stale_renditions(get_storage(), settings)
            db.session.commit()
    except (BotoCoreError, ClientError, SQLAlchemyError) as exc:  # the next sweep tries again
        db.session.rollback()
        logger.warning("reconcile failed", extra={"error": repr(exc)})
        report.unreachable = True
    return lost


def sweep(settings: Settings, storage: bool = True) -> SweepReport:
    """Re-enqueue uploads older than ``SWEEP_AFTER_SECONDS``, stale ``processing`` rows and overdue retries.

    What it reads is only a list of candidates: each change re-checks its reason (a stale
    heartbeat, an overdue retry, an old ``updated_at``) in its own UPDATE, so a delivery
    that claimed a row since this sweep read it keeps it. It also reconciles the rows with
    SQS and S3 (``ops/reconcile.py``; ``storage``: the bucket's listing too). The sweep owns
    its transactions: it commits after each pass, and each row before its message is sent.
    """
    report = SweepReport(expired=direct.expire(settings))
    db.session.commit()
    prune_keys(timedelta(seconds=settings.IDEMPOTENCY_KEY_SECONDS))
    quotas.prune()
    webhooks.prune(settings)
    db.session.commit()
    report.relayed = webhooks.relay(settings)
    db.session.commit()  # sends them
    report.optimize_sent = resend_optimize(settings)
    now = utcnow()
    stale_after = settings.STALE_AFTER_SECONDS
    grace = timedelta(seconds=settings.SWEEP_AFTER_SECONDS)
    stale = now - timedelta(seconds=stale_after)
    overdue = select(Video.id).where(
        or_(
            and_(Video.status == Status.PROCESSING.value, Video.heartbeat_at < stale),
            and_(Video.status == Status.RETRYING.value, Video.retry_at < stale),
        )
    )
    for video_id in db.session.scalars(overdue).all():
        if jobs.give_up(video_id, stale_after, settings.MAX_ATTEMPTS):
            report.failed.append(video_id)
        else:  # backdated past the grace, so the loop below enqueues it now
            jobs.reset(video_id, stale_after, backdate=grace + timedelta(seconds=1))
        db.session.commit()
    waiting = db.session.scalars(
        select(Video.id).where(Video.status == Status.UPLOADED.value, Video.updated_at < now - grace)
    ).all()
    lost = _reconcile(settings, report, storage)
    for video_id, sources in [*((v, (Status.UPLOADED,)) for v in waiting), *((v, (Status.QUEUED,)) for v in lost)]:
        try:
            if requeue(video_id, sources, lease_older_than=grace):
                report.requeued.append(video_id)
        except EnqueueError:
            report.unreachable = True
            break  # SQS is down: the rest waits for the next sweep
    logger.info(
        "sweep done",
        extra={
            "requeued": len(report.requeued),
            "failed": len(report.failed),
            "expired": len(report.expired),
            "dead_lettered": len(report.dead_lettered),
            "orphans": len(report.orphans),
            "aborted": len(report.aborted),
            "relayed": len(report.relayed),
            "optimize_sent": len(report.optimize_sent),
            "unreachable": report.unreachable,
        },
    )
    return report


def resend_optimize(settings: Settings) -> list[str]:
    """Send again the optimize messages that were not sent (``pending``) or were lost (silent far past any retry).

    A stage is ``optimizing`` and silent while its retry waits in SQS (at most ``TASK_RETRY_BACKOFF_MAX``)
    or its dead worker's message waits out the visibility timeout: only past both is its message lost.
    """
    stale_after = settings.STALE_AFTER_SECONDS
    lost_after = stale_after + settings.TASK_RETRY_BACKOFF_MAX + 2 * settings.SQS_VISIBILITY_TIMEOUT
    for video_id in optimize.candidates(optimize.OPTIMIZING, lost_after):
        if not optimize.give_up(video_id, lost_after, settings.MAX_ATTEMPTS):
            optimize.reset(video_id, lost_after)
        db.session.commit()
    grace = settings.SWEEP_AFTER_SECONDS
    sent = []
    for video_id in optimize.candidates(optimize.PENDING, grace):
        if not optimize.resend(video_id, grace):
            continue
        db.session.commit()  # the lease first: of several sweepers, one sends
        try:
            send_optimize(video_id)
        except EnqueueError:
            db.session.rollback()
            break  # SQS is down: the rest waits for the next sweep
        db.session.commit()
        sent.append(video_id)
    return sent


def prune_keys(older_than: timedelta) -> int:
    """Delete Idempotency-Keys recorded more than ``older_than`` ago; return how many (the caller commits)."""
    result = db.session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < utcnow() - older_than))
    return int(getattr(result, "rowcount", 0) or 0)
