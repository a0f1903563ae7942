"""The job's state machine: every change of a video's status, each one conditional UPDATE.

A video's row is its job's state, and this module is the only writer of its status.
Every change is one ``UPDATE … WHERE`` inside the caller's unit of work (the caller commits:
a request at its end, a task at each step others must see, a sweep after each pass), carrying
its whole guard: the source statuses
(``TRANSITIONS``), the holder's token where only the holder may move the row, and the
heartbeat or retry time where staleness is the reason. Two actors racing on one row (a
redelivery and the sweeper, two deliveries of one message, a retry and the sweeper) can't
both win: the loser's WHERE no longer matches, whatever either of them read before.

===========  =========================================  ==========  ==================================
transition   from                                       to          guard (besides the status)
===========  =========================================  ==========  ==================================
complete     uploading                                  completing  (the owner completes; an abort now loses)
reopen       completing                                 uploading   (S3 refused the parts, or was unreachable)
upload_done  completing                                 uploaded    (S3 has the whole, checked object)
refuse       completing                                 failed      (the object is not what was declared)
enqueued     uploaded                                   queued      (its message was sent)
claim        uploaded, queued; processing; retrying     processing  waiting; stale heartbeat; the retry
                                                                    of ``previous`` (see below)
beat         processing                                 processing  held by the caller
finish       processing                                 processed   held by the caller
fail         processing                                 failed      held by the caller
release      processing                                 queued      held by the caller
wait_retry   processing                                 retrying    held by the caller
give_up      processing                                 failed      too many attempts, worker dead
reset        processing, retrying                       uploaded    stale heartbeat; retry overdue
dead_letter  queued                                     failed      its message is in the DLQ (sweeper)
renew        uploaded, queued, failed                   uploaded    lease on ``updated_at`` (sweeper;
                                                                    queued: its message is lost)
cancel       uploaded, queued, processing, retrying     cancelled   (the owner, or a revoke)
===========  =========================================  ==========  ==================================

An ``uploading`` row that is aborted or expires is deleted (``discard_upload``), not moved; a
``completing`` one can't be (the complete won the race), and one whose complete died with its
process is reopened by the sweeper.

A move to a final state (processed, failed, cancelled) writes its webhook event in the same
transaction (``webhooks.record``): the outbox commits or rolls back with the change.

Tokens: a delivery holds the row as ``<task id>:<retries>``. A delivery may take over its
``previous`` token's row when that try is known to be over: it is ``retrying`` (the try
asked for the retry), or it is ``processing`` and this delivery is the retry the worker's
main process sent after losing the pool process that ran it (``task_retry_on_worker_lost``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, CursorResult, and_, case, delete, or_, select, update

from domain import optimize, webhooks
from domain.extensions import db
from domain.models import Status, Video, new_id, utcnow

S = Status
# name: (the statuses it moves from, the status it moves to)
TRANSITIONS: dict[str, tuple[frozenset[Status], Status]] = {
    "complete": (frozenset({S.UPLOADING}), S.COMPLETING),
    "reopen": (frozenset({S.COMPLETING}), S.UPLOADING),
    "upload_done": (frozenset({S.COMPLETING}), S.UPLOADED),
    "refuse": (frozenset({S.COMPLETING}), S.FAILED),
    "enqueued": (frozenset({S.UPLOADED}), S.QUEUED),
    "claim": (frozenset({S.UPLOADED, S.QUEUED, S.PROCESSING, S.RETRYING}), S.PROCESSING),
    "beat": (frozenset({S.PROCESSING}), S.PROCESSING),
    "finish": (frozenset({S.PROCESSING}), S.PROCESSED),
    "fail": (frozenset({S.PROCESSING}), S.FAILED),
    "release": (frozenset({S.PROCESSING}), S.QUEUED),
    "wait_retry": (frozenset({S.PROCESSING}), S.RETRYING),
    "give_up": (frozenset({S.PROCESSING}), S.FAILED),
    "reset": (frozenset({S.PROCESSING, S.RETRYING}), S.UPLOADED),
    "dead_letter": (frozenset({S.QUEUED}), S.FAILED),
    "renew": (frozenset({S.UPLOADED, S.QUEUED, S.FAILED}), S.UPLOADED),
    "cancel": (frozenset({S.UPLOADED, S.QUEUED, S.PROCESSING, S.RETRYING}), S.CANCELLED),
}
# What no longer holds a worker: the row's lease is over.
LEASE_OVER = {"claimed_by": None, "heartbeat_at": None, "retry_at": None}


def _move(name: str, video_id: str, *guards: ColumnElement[bool], **values: Any) -> bool:
    """Apply transition ``name`` if the row is in one of its sources and every guard holds; the caller commits."""
    sources, target = TRANSITIONS[name]
    stmt = update(Video).where(Video.id == video_id, Video.status.in_([s.value for s in sources]), *guards)
    values = {"status": target.value, "updated_at": utcnow(), **values}
    result: CursorResult[Any] = db.session.execute(stmt.values(**values))  # type: ignore[assignment]
    moved = result.rowcount == 1
    if moved and target in webhooks.EVENT_OF:  # the event commits, or rolls back, with the change
        webhooks.record(video_id, target)
    return moved


def _stale(column: Any, stale_after: float) -> ColumnElement[bool]:
    return column < utcnow() - timedelta(seconds=stale_after)


UPLOAD_OVER = {"s3_upload_id": None, "part_size": None, "upload_expires_at": None}


def begin_complete(video_id: str) -> bool:
    """Take a direct upload's row for its complete: from here an abort or an expiry can't remove it."""
    return _move("complete", video_id)


def reopen(video_id: str, stale_after: float | None = None, deadline: datetime | None = None) -> bool:
    """Give a ``completing`` upload back to its client (the complete failed, or, ``stale_after``, died).

    ``deadline``: the upload's new ``upload_expires_at``.
    """
    guards = [_stale(Video.updated_at, stale_after)] if stale_after is not None else []
    return _move("reopen", video_id, *guards, **({"upload_expires_at": deadline} if deadline else {}))


def upload_done(video_id: str) -> bool:
    """Mark a direct upload's video stored, once S3 has the whole object and it passed the checks."""
    return _move("upload_done", video_id, **UPLOAD_OVER)


def refuse_upload(video_id: str, code: str, message: str, original_key: str | None = None) -> bool:
    """End a direct upload ``failed``: its object was not what was declared (and went to ``original_key``)."""
    moved = {"original_key": original_key} if original_key else {}
    return _move("refuse", video_id, error_code=code, error_message=message, **UPLOAD_OVER, **moved)


def discard_upload(video_id: str) -> bool:
    """Delete the row of a direct upload that was aborted or expired, if it is still uploading."""
    stmt = delete(Video).where(Video.id == video_id, Video.status == S.UPLOADING.value)
    result: CursorResult[Any] = db.session.execute(stmt)  # type: ignore[assignment]
    return result.rowcount == 1


def enqueued(video_id: str) -> bool:
    """Mark an uploaded video queued once its message is sent (a fast worker may be ahead: then no change)."""
    return _move("enqueued", video_id)


def claim(video_id: str, token: str, previous: str | None, stale_after: float, takeover: bool = True) -> bool:
    """Take the row for processing under ``token``; return whether it was taken.

    It can be taken when it waits (uploaded, queued), when its processing heartbeat is
    older than ``stale_after`` (its worker died), when it is ``retrying`` for ``previous``
    (this delivery is that retry), and, with ``takeover``, when ``previous`` still holds it
    ``processing`` (the worker's main process retried it after losing its pool process).
    A retry continues its attempt; any other claim starts one.
    """
    processing, retrying = Video.status == S.PROCESSING.value, Video.status == S.RETRYING.value
    takeable = [
        Video.status.in_([S.UPLOADED.value, S.QUEUED.value]),
        and_(processing, _stale(Video.heartbeat_at, stale_after)),
    ]
    if previous:
        takeable.append(and_(retrying, Video.claimed_by == previous))
        if takeover:
            takeable.append(and_(processing, Video.claimed_by == previous))
    now = utcnow()
    return _move(
        "claim",
        video_id,
        or_(*takeable),
        claimed_by=token,
        progress=0,
        attempts=case((retrying, Video.attempts), else_=Video.attempts + 1),
        heartbeat_at=now,
        retry_at=None,
        started_at=case((retrying, Video.started_at), else_=now),
        updated_at=now,
        error_code=None,
        error_message=None,
    )


def beat(video_id: str, token: str, progress: int | None = None) -> bool:
    """Record that the job holding the row is alive, and its progress when given."""
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if progress is not None:
        values["progress"] = progress
    return _move("beat", video_id, Video.claimed_by == token, **values)


def finish(
    video_id: str,
    token: str,
    video_key: str,
    poster_key: str,
    probed: dict[str, Any] | None = None,
    optimizing: bool = False,
) -> bool:
    """Record the holder's result, and what its probe found of the original (``duration``, ``width``, ``height``).

    ``optimizing``: the video's optimize stage starts ``pending`` (domain/optimize.py); its message follows.
    """
    stage: dict[str, Any] = {"optimize_status": None}
    if optimizing:
        stage = {"optimize_status": optimize.PENDING, "optimize_heartbeat_at": utcnow(), "optimize_attempts": 0}
    return _move(
        "finish",
        video_id,
        Video.claimed_by == token,
        **(probed or {}),
        progress=100,
        processed_key=video_key,
        poster_key=poster_key,
        processed_at=utcnow(),
        heartbeat_at=None,
        av1_key=None,
        optimized_at=None,
        renditions=None,
        optimize_claimed_by=None,
        optimize_progress=0,
        optimize_error=None,
        **stage,
    )


def fail(video_id: str, token: str, code: str, message: str, original_key: str | None = None) -> bool:
    """Record why the holder's job failed for good, and where its original went when it was quarantined."""
    moved = {"original_key": original_key} if original_key else {}
    return _move(
        "fail",
        video_id,
        Video.claimed_by == token,
        error_code=code,
        error_message=message[:2000],
        heartbeat_at=None,
        **moved,
    )


def release(video_id: str, token: str) -> bool:
    """Hand the holder's row back to the queue (the job was stopped; its message goes back too)."""
    return _move("release", video_id, Video.claimed_by == token, heartbeat_at=None)


def wait_retry(video_id: str, token: str, delay: float) -> bool:
    """Park the holder's row until its retry, due in ``delay`` seconds; the retry's delivery claims it."""
    return _move(
        "wait_retry",
        video_id,
        Video.claimed_by == token,
        heartbeat_at=None,
        retry_at=utcnow() + timedelta(seconds=delay),
    )


def give_up(video_id: str, stale_after: float, max_attempts: int, dead: str | None = None) -> bool:
    """Fail a row whose worker died ``max_attempts`` times (a job that kills its worker).

    The worker is dead when the heartbeat is stale, or when the row is held by ``dead``,
    a try known to be over (the pool process that ran it was lost).
    """
    gone = _stale(Video.heartbeat_at, stale_after)
    if dead:
        gone = or_(gone, Video.claimed_by == dead)
    return _move(
        "give_up",
        video_id,
        gone,
        Video.attempts >= max_attempts,
        error_code="worker_lost",
        error_message=f"The worker processing this video died {max_attempts} times; giving up.",
        heartbeat_at=None,
    )


def reset(video_id: str, stale_after: float, backdate: timedelta) -> bool:
    """Free a row the queue lost (the sweeper): a stale ``processing`` one, or a retry overdue by ``stale_after``.

    The staleness is checked in the UPDATE itself, so a redelivery that claimed the row
    since the sweeper read it keeps it. ``backdate`` puts ``updated_at`` that far back, so
    the sweep that reset it enqueues it at once.
    """
    overdue = or_(
        and_(Video.status == S.PROCESSING.value, _stale(Video.heartbeat_at, stale_after)),
        and_(Video.status == S.RETRYING.value, _stale(Video.retry_at, stale_after)),
    )
    return _move("reset", video_id, overdue, **LEASE_OVER, progress=0, updated_at=utcnow() - backdate)


def renew(
    video_id: str, sources: tuple[Status, ...], lease_older_than: timedelta | None = None, reset_attempts: bool = False
) -> str | None:
    """Give a waiting (``uploaded``) or ``failed`` row a new task id, to enqueue; return it, or None.

    ``lease_older_than`` takes only rows untouched for that long (a lease: of several
    sweepers, one wins). The row stays ``uploaded`` until ``enqueued``, so a failed send
    leaves it for the next sweep.
    """
    assert set(sources) <= TRANSITIONS["renew"][0], sources
    guards: list[ColumnElement[bool]] = [Video.status.in_([s.value for s in sources])]
    if lease_older_than is not None:
        guards.append(_stale(Video.updated_at, lease_older_than.total_seconds()))
    task_id = new_id()
    values: dict[str, Any] = {"task_id": task_id, "progress": 0, **LEASE_OVER}
    if reset_attempts:
        values |= {"attempts": 0, "error_code": None, "error_message": None}
    return task_id if _move("renew", video_id, *guards, **values) else None


def dead_letter(video_id: str, task_id: str, older_than: float) -> bool:
    """Fail a ``queued`` row whose message (``task_id``'s) SQS dead-lettered, untouched for ``older_than`` s; retryable.

    The task id guard keeps a dead letter of an earlier try (the DLQ keeps it for the operator)
    from failing the video's retry, which has a new one.
    """
    return _move(
        "dead_letter",
        video_id,
        Video.task_id == task_id,
        _stale(Video.updated_at, older_than),
        error_code="dead_lettered",
        error_message="Its message could not be delivered to a worker; retry it.",
        **LEASE_OVER,
    )


def cancel(video_id: str) -> bool:
    """Cancel a video that has not ended: a waiting one is never started, a running job stops (``holds``)."""
    return _move("cancel", video_id, **LEASE_OVER)


def holds(video_id: str, token: str) -> bool:
    """Return whether ``token`` still holds the row ``processing`` (not cancelled, deleted or taken over)."""
    held = select(Video.id).where(Video.id == video_id, Video.status == S.PROCESSING.value, Video.claimed_by == token)
    return db.session.execute(held).first() is not None
