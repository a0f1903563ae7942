"""Accept an upload: spool to disk, probe, store in S3, record, enqueue."""

from __future__ import annotations

import logging
import os
from typing import Any

from sqlalchemy import inspect, select
from werkzeug.datastructures import FileStorage

from domain import media, quotas
from domain.errors import NotAVideo, TooLarge, Unavailable, refused
from domain.extensions import db, get_settings
from domain.models import Status, User, Video, new_id
from domain.queue import EnqueueError, publish
from domain.storage import get_storage, original_key
from media import runner
from media.probe import ProbeError, probe_twice
from media.validate import MediaRejected, check, rejection

logger = logging.getLogger(__name__)
MAX_FILENAME = 255
CONTENT_TYPES = {"mp4": "video/mp4", "mov": "video/quicktime"}


def _spooled_path(file: FileStorage) -> str:
    """Return the path of the uploaded part on disk."""
    stream: Any = file.stream
    stream.flush()
    return str(stream.name)


def clean_filename(name: str | None, limit: int = MAX_FILENAME) -> str | None:
    """Return the client's file name without control characters or paths, at most ``limit`` characters."""
    name = "".join(c for c in (name or "") if c.isprintable()).replace("\\", "/").rsplit("/", 1)[-1].strip()
    if len(name) > limit:
        stem, dot, ext = name.rpartition(".")
        name = stem[: limit - len(ext) - 1] + dot + ext if dot and len(ext) <= 10 else name[:limit]
    return name or None


def accept_upload(user: User, file: FileStorage, title: str) -> Video:
    """Validate and store an upload, and add its row to the session; return the row, detached (``record``).

    The caller commits, then enqueues (``queue_stored``): the row exists before any worker
    can see the message.
    """
    config = get_settings()
    path = _spooled_path(file)
    size = os.path.getsize(path)
    if size > config.MAX_UPLOAD_BYTES:
        raise TooLarge("file_too_large", f"The upload exceeds the limit of {config.MAX_UPLOAD_BYTES} bytes.")
    if size == 0:
        raise NotAVideo("not_a_video", "The file is empty.")
    limits = media.limits(config)
    try:
        info = probe_twice(path, media.confinement(config))
        check(info, limits)
    except ProbeError as exc:
        if exc.blame != runner.FILE:  # killed, or crashed or slow once: a busy host's, not the file's verdict
            logger.warning("probe failed", extra={"reason": exc.reason, "ffprobe": exc.detail[-500:]})
            message = "The video could not be checked just now; send it again shortly."
            raise Unavailable("probe_unavailable", message, retry_after=5) from exc
        rejected = rejection(exc, limits)
        logger.info("upload refused", extra={"code": rejected.code, "reason": exc.reason, "ffprobe": exc.detail[-500:]})
        raise refused(rejected) from exc
    except MediaRejected as exc:
        logger.info("upload refused", extra={"code": exc.code})
        raise refused(exc) from exc

    video_id = new_id()
    filename = clean_filename(file.filename)
    key = original_key(video_id, filename, info.container)
    storage = get_storage()
    try:
        storage.upload_file(path, key, CONTENT_TYPES.get(info.container, "application/octet-stream"))
    except Exception as exc:
        logger.exception("upload to S3 failed", extra={"video_id": video_id})
        raise Unavailable("storage_unavailable", "The video could not be stored; try again shortly.") from exc

    video = Video(
        id=video_id,
        user_id=user.id,
        title=title,
        status=Status.UPLOADED.value,
        original_key=key,
        original_filename=filename,
        size_bytes=size,
        duration=info.duration,
        width=info.width,
        height=info.height,
    )
    try:
        quotas.check_upload(user.id, size, lock=True)  # again, under the user's lock, with the real size
        record(video)
    except Exception:
        try:  # an object with no row: the sweeper deletes what is left (``reconcile``)
            storage.delete_prefix(f"originals/{video_id}/")
        except Exception as cleanup:  # the caller gets the error that stopped the upload, not this one
            logger.warning("clean-up failed", extra={"video_id": video_id, "error": repr(cleanup)})
        raise
    logger.info("upload stored", extra={"video_id": video_id, "task_id": video.task_id, "bytes": size})
    return video


def record(video: Video) -> None:
    """Insert ``video`` and count its bytes (the caller commits); it stays detached, so nothing is read back."""
    db.session.add(video)
    quotas.count(video)
    db.session.flush()
    db.session.expunge(video)  # the commit expires what the session holds: reading it again is a transaction


def queue_stored(video: Video) -> bool:
    """Send a committed ``uploaded`` video's message and mark it queued; False when SQS is unreachable.

    The sweeper sends it later then. ``video`` is detached (``record``): its ``status`` is set
    to the row's, never flushed. The caller commits the move to ``queued``.
    """
    assert inspect(video).detached
    try:
        moved = publish(video.id, video.task_id)
    except EnqueueError:
        return False
    if moved:
        video.status = Status.QUEUED.value
    else:
        video.status = db.session.scalar(select(Video.status).where(Video.id == video.id)) or video.status
    return True
