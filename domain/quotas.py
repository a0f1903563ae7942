"""Fair use: per-user limits on videos in flight, uploads and bytes a day, and retries of a failed video.

Each limit is a setting; a request over one is refused (``OverLimit``) with a code naming it. The
upload route checks before it reads the body (the declared length counts) and again,
with the user's row locked, in the transaction that records the video, so concurrent
uploads can't slip past together.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, func, select, update

from domain.errors import Conflict, OverLimit
from domain.extensions import db, get_settings
from domain.models import Status, Usage, User, Video, utcnow

ACTIVE = (
    Status.UPLOADING.value,
    Status.COMPLETING.value,
    Status.UPLOADED.value,
    Status.QUEUED.value,
    Status.PROCESSING.value,
    Status.RETRYING.value,
)
DAY = timedelta(days=1)
# Failures a retry can cure. The others are about the file itself: retrying would only repeat them.
RETRYABLE = {"internal_error", "retries_exhausted", "worker_lost", "dead_lettered"}


def _too_many(code: str, message: str, retry_after: int) -> OverLimit:
    return OverLimit(code, message, retry_after=max(retry_after, 1))


def _seconds_until_window_frees(user_id: int) -> int:
    oldest = db.session.scalar(
        select(func.min(Usage.created_at)).where(Usage.user_id == user_id, Usage.created_at > utcnow() - DAY)
    )
    if oldest is None:
        return 60
    return int((oldest + DAY - utcnow()).total_seconds()) + 1


def _usage(user_id: int, lock: bool) -> tuple[int, int, int]:
    """Return the user's videos in flight, and uploads and bytes in the last day: one round trip.

    The day's uploads and bytes are the usage ledger's (``Usage``): an upload counts from its
    start, and an abort, an expiry or a delete refunds nothing S3 had received. With ``lock``
    the same statement locks the user's row (``FOR UPDATE OF users``; PostgreSQL refuses a lock
    beside aggregates, hence the scalar subqueries).
    """
    recent = (Usage.user_id == user_id, Usage.created_at > utcnow() - DAY)
    query = select(
        select(func.count()).where(Video.user_id == user_id, Video.status.in_(ACTIVE)).scalar_subquery(),
        select(func.count(Usage.id)).where(*recent).scalar_subquery(),
        select(func.coalesce(func.sum(Usage.bytes), 0)).where(*recent).scalar_subquery(),
    ).where(User.id == user_id)
    row = db.session.execute(query.with_for_update(of=User) if lock else query).one_or_none()
    return (int(row[0]), int(row[1]), int(row[2])) if row else (0, 0, 0)


def check_upload(user_id: int, incoming_bytes: int, lock: bool = False) -> None:
    """Raise ``OverLimit`` when one more upload of ``incoming_bytes`` would break a limit.

    With ``lock`` the user's row is locked (``SELECT … FOR UPDATE``) until the caller's
    transaction ends: call it right before inserting the video, then commit.
    """
    config = get_settings()
    active, count, total = _usage(user_id, lock)
    if active >= config.USER_MAX_ACTIVE_VIDEOS:
        raise _too_many(
            "too_many_active_videos",
            f"You have {active} videos waiting or processing; the limit is {config.USER_MAX_ACTIVE_VIDEOS}.",
            60,
        )
    if count >= config.USER_MAX_UPLOADS_PER_DAY:
        raise _too_many(
            "daily_upload_limit",
            f"You uploaded {count} videos in the last 24 hours; the limit is {config.USER_MAX_UPLOADS_PER_DAY}.",
            _seconds_until_window_frees(user_id),
        )
    if total + incoming_bytes > config.USER_MAX_BYTES_PER_DAY:
        raise _too_many(
            "daily_bytes_limit",
            f"This upload would take you over {config.USER_MAX_BYTES_PER_DAY} bytes in 24 hours.",
            _seconds_until_window_frees(user_id),
        )


def count(video: Video) -> None:
    """Add a new video's declared bytes to its owner's usage (with its row, in the caller's unit of work)."""
    db.session.add(Usage(user_id=video.user_id, video_id=video.id, bytes=video.size_bytes or 0))


def settle(video_id: str, stored: int) -> None:
    """Lower (or raise) a video's usage to the bytes S3 really holds or received: an abort refunds only the rest."""
    db.session.execute(update(Usage).where(Usage.video_id == video_id).values(bytes=stored))


def prune(older_than: timedelta = DAY) -> int:
    """Delete usage older than the limits' window; return how many rows (the caller commits)."""
    result = db.session.execute(delete(Usage).where(Usage.created_at < utcnow() - older_than))
    return int(getattr(result, "rowcount", 0) or 0)


def claim_retry(video: Video) -> None:
    """Count one retry of a failed ``video`` by its owner, or raise ``Conflict`` or ``OverLimit`` when it may not be."""
    config = get_settings()
    if video.status != Status.FAILED.value:
        raise Conflict("not_failed", f"Only failed videos can be retried; this one is {video.status}.")
    if video.error_code not in RETRYABLE:
        raise Conflict("not_retryable", f"This video failed with {video.error_code}: the file itself would fail again.")
    check_upload(video.user_id, 0, lock=True)
    maximum = config.VIDEO_MAX_RETRIES
    counted = db.session.execute(
        update(Video)
        .where(Video.id == video.id, Video.status == Status.FAILED.value, Video.retries < maximum)
        .values(retries=Video.retries + 1)
    ).rowcount  # type: ignore[attr-defined]  # an UPDATE's CursorResult
    if counted != 1:
        raise _too_many("retry_limit", f"This video has been retried {maximum} times already.", 24 * 3600)
