"""Accept an upload: spool to disk, probe, store in S3, record, enqueue."""

from __future__ import annotations

import logging
import os
import tempfile
from typing import IO, Any

from flask import Request, current_app
from werkzeug.datastructures import FileStorage

from app.api.errors import APIError
from app.extensions import db
from app.models import Status, User, Video, new_id
from app.queue import EnqueueError, enqueue_video
from app.storage import get_storage, original_key
from media.probe import ProbeError, probe
from media.sandbox import Sandbox
from media.validate import Limits, MediaRejected, check, rejection

logger = logging.getLogger(__name__)
CONTENT_TYPES = {"mp4": "video/mp4", "mov": "video/quicktime"}


class UploadRequest(Request):
    """A request whose file parts go straight to a named temporary file on disk.

    Werkzeug would keep small parts in memory; a named file lets ffprobe read the
    upload where it lies, and the web process never holds a whole video in memory.
    """

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        return tempfile.NamedTemporaryFile("wb+", dir=current_app.config["UPLOAD_TMP_DIR"], prefix="upload-")


def _spooled_path(file: FileStorage) -> str:
    """Return the path of the uploaded part on disk."""
    stream: Any = file.stream
    stream.flush()
    return str(stream.name)


def accept_upload(user: User, file: FileStorage, title: str) -> tuple[Video, bool]:
    """Validate and store an upload; return its row and whether it was enqueued."""
    config = current_app.config
    path = _spooled_path(file)
    size = os.path.getsize(path)
    if size > config["MAX_UPLOAD_BYTES"]:
        raise APIError(413, "file_too_large", f"The upload exceeds the limit of {config['MAX_UPLOAD_BYTES']} bytes.")
    if size == 0:
        raise APIError(415, "not_a_video", "The file is empty.")
    limits = Limits.from_settings(config)
    try:
        info = probe(path, Sandbox.from_settings(config))
        check(info, limits)
    except ProbeError as exc:
        refused = rejection(exc, limits)
        logger.info("upload refused", extra={"code": refused.code, "reason": exc.reason, "ffprobe": exc.detail[-500:]})
        raise APIError(refused.status, refused.code, refused.message) from exc
    except MediaRejected as exc:
        logger.info("upload refused", extra={"code": exc.code})
        raise APIError(exc.status, exc.code, exc.message) from exc

    video_id = new_id()
    key = original_key(video_id, file.filename, info.container)
    storage = get_storage()
    try:
        storage.upload_file(path, key, CONTENT_TYPES.get(info.container, "application/octet-stream"))
    except Exception as exc:
        logger.exception("upload to S3 failed", extra={"video_id": video_id})
        raise APIError(503, "storage_unavailable", "The video could not be stored; try again shortly.") from exc

    video = Video(
        id=video_id,
        owner=user,
        title=title,
        status=Status.UPLOADED.value,
        original_key=key,
        original_filename=file.filename,
        size_bytes=size,
        duration=info.duration,
        width=info.width,
        height=info.height,
    )
    db.session.add(video)
    try:
        db.session.commit()  # the row exists before any worker can see the message
    except Exception:
        db.session.rollback()
        storage.delete_prefix(f"originals/{video_id}/")
        raise
    logger.info("upload stored", extra={"video_id": video_id, "task_id": video.task_id, "bytes": size})
    try:
        enqueue_video(video.id, video.task_id)
    except EnqueueError:
        return video, False
    # Conditional: a fast worker may already have moved the row on to processing.
    Video.transition(video.id, (Status.UPLOADED,), Status.QUEUED)
    db.session.refresh(video)
    return video, True
