"""The optimize stage's state on a processed video's row: each move one conditional ``UPDATE``.

After a video is published (``processed``) its optimize stage makes smaller renditions at the
same quality (tasks/optimize.py). The published rendition stays what it is until the one move
that replaces it, ``done``; a failure, a cancel or a lost worker of this stage leaves it alone.
Every move requires ``status = processed``: a video deleted meanwhile has no row, and nothing
here moves a video that is not published.

=========  ===========================  ==========  ============================================
move       from                         to          guard (besides the optimize status)
=========  ===========================  ==========  ============================================
(finish)   (jobs.finish)                pending     ``OPTIMIZE`` is not ``off``
sent       pending                      queued      (its message was sent)
claim      queued, pending; optimizing  optimizing  waiting; stale heartbeat; held by ``previous``
beat       optimizing                   optimizing  held by the caller
done       optimizing                   optimized   held by the caller; the published key unchanged
fail       optimizing                   failed      held by the caller
give_up    optimizing                   failed      ``MAX_ATTEMPTS`` tries, the holder dead
release    optimizing                   pending     held by the caller (stopped; its retry follows, or the sweeper's)
cancel     pending, queued, optimizing  cancelled   (the owner)
resend     pending                      pending     untouched for a while: its send failed, or released (sweeper)
reset      optimizing                   pending     stale far past any retry: its message is lost (sweeper)
=========  ===========================  ==========  ============================================

Tokens are the process stage's (``<task id>:<retries>``, domain/jobs.py). Each attempt writes
its renditions under keys of its own (``storage.rendition_key``): an attempt that loses the
row removes only what it wrote.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, CursorResult, and_, case, or_, select, update

from domain.extensions import db
from domain.models import Status, Video, utcnow

PENDING, QUEUED, OPTIMIZING = "pending", "queued", "optimizing"
OPTIMIZED, FAILED, CANCELLED = "optimized", "failed", "cancelled"
STATUSES = (PENDING, QUEUED, OPTIMIZING, OPTIMIZED, FAILED, CANCELLED)
WAITING = (PENDING, QUEUED)
LEASE_OVER = {"optimize_claimed_by": None, "optimize_heartbeat_at": None}


def _move(video_id: str, sources: tuple[str, ...], *guards: ColumnElement[bool], **values: Any) -> bool:
    """Apply one move when the video is published, its optimize stage in ``sources`` and every guard holds."""
    stmt = update(Video).where(
        Video.id == video_id,
        Video.status == Status.PROCESSED.value,
        Video.optimize_status.in_(sources),
        *guards,
    )
    result: CursorResult[Any] = db.session.execute(stmt.values(**values))  # type: ignore[assignment]
    return result.rowcount == 1


def _stale(stale_after: float) -> ColumnElement[bool]:
    return Video.optimize_heartbeat_at < utcnow() - timedelta(seconds=stale_after)


def _held(token: str) -> ColumnElement[bool]:
    return Video.optimize_claimed_by == token


def sent(video_id: str) -> bool:
    """Mark a pending optimize stage queued once its message is sent (a fast worker may be ahead: no change)."""
    return _move(video_id, (PENDING,), optimize_status=QUEUED)


def claim(video_id: str, token: str, previous: str | None, stale_after: float, continues: str | None = None) -> bool:
    """Take the stage under ``token``: when it waits, when its holder's heartbeat is stale, or from ``previous``.

    ``previous`` is this task's earlier try, known to be over (its pool process was lost, or it asked
    for this retry). Each claim is an attempt (``give_up`` counts them), but one from ``continues``
    (the try that asked for this retry after a passing fault, still holding the stage) continues it:
    a redelivery of that retry, its own worker lost, is counted.
    """
    attempt = case((_held(continues), 0), else_=1) if continues else 1
    takeable = [Video.optimize_status.in_(WAITING), and_(Video.optimize_status == OPTIMIZING, _stale(stale_after))]
    if previous:
        takeable.append(and_(Video.optimize_status == OPTIMIZING, _held(previous)))
    return _move(
        video_id,
        (*WAITING, OPTIMIZING),
        or_(*takeable),
        optimize_status=OPTIMIZING,
        optimize_claimed_by=token,
        optimize_heartbeat_at=utcnow(),
        optimize_attempts=Video.optimize_attempts + attempt,
        optimize_progress=0,
        optimize_error=None,
    )


def beat(video_id: str, token: str, progress: int | None = None) -> bool:
    """Record that the holder is alive, and its progress when given."""
    values: dict[str, Any] = {"optimize_heartbeat_at": utcnow()}
    if progress is not None:
        values["optimize_progress"] = progress
    return _move(video_id, (OPTIMIZING,), _held(token), **values)


def holds(video_id: str, token: str) -> bool:
    """Return whether ``token`` still holds the stage (not cancelled, deleted or taken over)."""
    held = select(Video.id).where(
        Video.id == video_id,
        Video.status == Status.PROCESSED.value,
        Video.optimize_status == OPTIMIZING,
        _held(token),
    )
    return db.session.execute(held).first() is not None


def done(
    video_id: str, token: str, published: str, h264_key: str, av1_key: str | None, renditions: dict[str, Any]
) -> bool:
    """Publish the holder's renditions in one move: ``processed_key`` becomes the smaller H.264 file.

    ``h264_key`` is ``published`` itself when no H.264 rendition was worth it (``media.quality.worth``).

    Only while the published key is still ``published`` (the one the renditions replace).
    ``renditions``: ``{"renditions": {name: what it was made with}, "window_cpu_seconds": …}``.
    """
    return _move(
        video_id,
        (OPTIMIZING,),
        _held(token),
        Video.processed_key == published,
        processed_key=h264_key,
        av1_key=av1_key,
        renditions=json.dumps(renditions, sort_keys=True),
        optimized_at=utcnow(),
        optimize_status=OPTIMIZED,
        optimize_progress=100,
        **LEASE_OVER,
    )


def fail(video_id: str, token: str, message: str) -> bool:
    """End the holder's stage ``failed``: the published rendition stays, and why is recorded."""
    return _move(
        video_id, (OPTIMIZING,), _held(token), optimize_status=FAILED, optimize_error=message[:2000], **LEASE_OVER
    )


def give_up(video_id: str, stale_after: float, max_attempts: int, dead: str | None = None) -> bool:
    """Fail a stage whose worker died ``max_attempts`` times: stale, or held by ``dead`` (a try known to be over)."""
    gone = _stale(stale_after)
    if dead:
        gone = or_(gone, _held(dead))
    message = f"The worker optimizing this video died {max_attempts} times; the published rendition stays."
    return _move(
        video_id,
        (OPTIMIZING,),
        gone,
        Video.optimize_attempts >= max_attempts,
        optimize_status=FAILED,
        optimize_error=message,
        **LEASE_OVER,
    )


def release(video_id: str, token: str) -> bool:
    """Hand the holder's stage back (its worker is stopping): its retry claims it, or, lost, the sweeper sends one.

    ``pending`` and touched now: a message Celery acknowledged anyway (a hard time limit) is not waited for forever.
    """
    return _move(
        video_id,
        (OPTIMIZING,),
        _held(token),
        optimize_status=PENDING,
        optimize_claimed_by=None,
        optimize_heartbeat_at=utcnow(),
    )


def cancel(video_id: str) -> bool:
    """Cancel a stage that has not ended: a waiting one is never started, a running one stops (``holds``)."""
    return _move(video_id, (*WAITING, OPTIMIZING), optimize_status=CANCELLED, optimize_progress=0, **LEASE_OVER)


def resend(video_id: str, older_than: float) -> bool:
    """Take a lease on a pending stage untouched for ``older_than`` seconds, to send its message again (sweeper)."""
    return _move(
        video_id,
        (PENDING,),
        or_(Video.optimize_heartbeat_at.is_(None), _stale(older_than)),
        optimize_heartbeat_at=utcnow(),
    )


def reset(video_id: str, older_than: float) -> bool:
    """Make a stage whose holder has been silent for ``older_than`` seconds pending again, to be sent (sweeper)."""
    return _move(video_id, (OPTIMIZING,), _stale(older_than), optimize_status=PENDING, **LEASE_OVER)


def candidates(status: str, older_than: float, limit: int = 100) -> list[str]:
    """Return published videos whose stage is ``status`` and untouched for ``older_than`` seconds (the sweeper's)."""
    untouched = or_(Video.optimize_heartbeat_at.is_(None), _stale(older_than))
    rows = select(Video.id).where(Video.status == Status.PROCESSED.value, Video.optimize_status == status, untouched)
    return list(db.session.scalars(rows.limit(limit)))


def renditions(video: Video) -> dict[str, Any]:
    """Return what each rendition of ``video`` was made with (empty until it is optimized)."""
    made = json.loads(video.renditions)["renditions"] if video.renditions else {}
    return {name: {"published": True, **record} for name, record in made.items()}  # recorded before the flag


def cpu_seconds(video: Video) -> float | None:
    """Return the CPU seconds of the whole stage: the probes' window, each rendition's probes and encode."""
    if not video.renditions:
        return None
    made = json.loads(video.renditions)
    spent = made["window_cpu_seconds"] + sum(
        r["probe_cpu_seconds"] + r["cpu_seconds"] for r in made["renditions"].values()
    )
    return round(spent, 2)
