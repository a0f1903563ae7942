"""Re-enqueue what the queue lost: uploads never queued, and jobs whose worker died.

Safe on several machines at once: each row is taken with a conditional UPDATE (a lease
on ``updated_at``) before it is enqueued, so only one sweeper sends its message; and a
message too many is harmless, as the task's claim lets only one delivery run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from app.extensions import db
from app.models import Status, Video, new_id, utcnow
from app.queue import EnqueueError, enqueue_video

logger = logging.getLogger(__name__)


@dataclass
class SweepReport:
    """What one sweep did."""

    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    unreachable: bool = False


def requeue(
    video_id: str,
    sources: tuple[Status, ...],
    lease_older_than: timedelta | None = None,
    reset_attempts: bool = False,
) -> bool:
    """Take the row (if still in ``sources``), give it a new task id and enqueue it; return success.

    The row is set to ``uploaded`` first, so a failed enqueue leaves it for the next sweep.
    """
    now = utcnow()
    task_id = new_id()
    stmt = update(Video).where(Video.id == video_id, Video.status.in_([s.value for s in sources]))
    if lease_older_than is not None:
        stmt = stmt.where(Video.updated_at < now - lease_older_than)
    values: dict[str, Any] = {"status": Status.UPLOADED.value, "task_id": task_id, "updated_at": now}
    values |= {"claimed_by": None, "heartbeat_at": None, "progress": 0}
    if reset_attempts:
        values |= {"attempts": 0, "error_code": None, "error_message": None}
    if db.session.execute(stmt.values(**values)).rowcount != 1:
        db.session.commit()
        return False
    db.session.commit()
    enqueue_video(video_id, task_id)  # raises EnqueueError: the row stays uploaded
    Video.transition(video_id, (Status.UPLOADED,), Status.QUEUED)
    return True


def sweep(settings: Mapping[str, Any]) -> SweepReport:
    """Re-enqueue uploads older than ``SWEEP_AFTER_SECONDS`` and stale ``processing`` rows."""
    report = SweepReport()
    now = utcnow()
    grace = timedelta(seconds=settings["SWEEP_AFTER_SECONDS"])
    stale = now - timedelta(seconds=settings["STALE_AFTER_SECONDS"])
    for video_id in db.session.scalars(
        select(Video.id).where(Video.status == Status.PROCESSING.value, Video.heartbeat_at < stale)
    ).all():
        if Video.give_up_if_exhausted(video_id, settings["STALE_AFTER_SECONDS"], settings["MAX_ATTEMPTS"]):
            report.failed.append(video_id)
        else:  # the heartbeat is the lease here: whoever resets the row first wins
            Video.transition(
                video_id,
                (Status.PROCESSING,),
                Status.UPLOADED,
                heartbeat_at=None,
                updated_at=now - grace - timedelta(seconds=1),
            )
    waiting = db.session.scalars(
        select(Video.id).where(Video.status == Status.UPLOADED.value, Video.updated_at < now - grace)
    ).all()
    for video_id in waiting:
        try:
            if requeue(video_id, (Status.UPLOADED,), lease_older_than=grace):
                report.requeued.append(video_id)
        except EnqueueError:
            report.unreachable = True
            break  # SQS is down: the rest waits for the next sweep
    logger.info(
        "sweep done",
        extra={"requeued": len(report.requeued), "failed": len(report.failed), "unreachable": report.unreachable},
    )
    return report
