"""Upload, list, read and delete videos."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from flask import Response, current_app, g, jsonify, request
from sqlalchemy import select

from app import quotas
from app.api import bp
from app.api.errors import APIError
from app.auth import login_required
from app.extensions import db
from app.models import Status, Video
from app.queue import EnqueueError
from app.storage import get_storage, video_prefixes
from app.sweeper import requeue
from app.uploads import accept_upload

MAX_TITLE = 200
MAX_PER_PAGE = 100
MAX_PAGE = 100_000
UPLOAD_FIELDS, UPLOAD_FILES = {"title"}, {"video_file"}


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def video_json(video: Video) -> dict[str, Any]:
    """Return the public representation of ``video``, with presigned URLs."""
    storage = get_storage()
    error = {"code": video.error_code, "message": video.error_message} if video.error_code else None
    return {
        "id": video.id,
        "title": video.title,
        "status": video.status,
        "progress": video.progress,
        "task_id": video.task_id,
        "created_at": _iso(video.created_at),
        "processed_at": _iso(video.processed_at),
        "original_url": storage.url(video.original_key),
        "processed_url": storage.url(video.processed_key),
        "poster_url": storage.url(video.poster_key),
        "error": error,
    }


def _own_video(video_id: str) -> Video:
    try:
        video_id = str(uuid.UUID(video_id))
    except ValueError:
        raise APIError(404, "not_found", "No such video.") from None
    video = db.session.get(Video, video_id)
    if video is None or video.user_id != g.user.id:
        raise APIError(404, "not_found", "No such video.")
    return video


@bp.post("/videos/upload")
@login_required
def upload() -> tuple[Response, int]:
    """Accept a video for processing; answer at once with its task id."""
    request.max_content_length = current_app.config["UPLOAD_MAX_CONTENT_LENGTH"]  # the one large body
    quotas.check_upload(g.user.id, request.content_length or 0)  # before reading the body
    db.session.commit()  # no transaction held open while the body is read and probed
    unexpected = (set(request.form) - UPLOAD_FIELDS) | (set(request.files) - UPLOAD_FILES)
    if unexpected:
        names = ", ".join(sorted(unexpected))[:200]
        raise APIError(400, "unexpected_field", f"Unexpected fields: {names}. Send only video_file and title.")
    if len(request.files.getlist("video_file")) > 1 or len(request.form.getlist("title")) > 1:
        raise APIError(400, "unexpected_field", "Send one video_file and one title.")
    file = request.files.get("video_file")
    title = (request.form.get("title") or "").strip()
    if file is None or not file.filename:
        raise APIError(400, "missing_file", "Send the video as the multipart field 'video_file'.")
    if not title or len(title) > MAX_TITLE:
        raise APIError(400, "invalid_title", f"A title of 1 to {MAX_TITLE} characters is required.")
    video, queued = accept_upload(g.user, file, title)
    if not queued:
        raise APIError(
            503,
            "queue_unavailable",
            "The video is stored, but the processing queue is unreachable: processing is delayed.",
            {"video_id": video.id, "task_id": video.task_id, "status": video.status},
        )
    body = {
        "task_id": video.task_id,
        "video_id": video.id,
        "status": video.status,
        "message": "Upload accepted; poll GET /api/videos/{id} for progress.",
    }
    return jsonify(body), 202


@bp.get("/videos")
@login_required
def list_videos() -> Response:
    """List the caller's videos, newest first."""
    page = request.args.get("page", 1, type=int) or 1
    if not 1 <= page <= MAX_PAGE:
        raise APIError(400, "invalid_page", f"page must be between 1 and {MAX_PAGE}.")
    per_page = min(max(request.args.get("per_page", 20, type=int) or 20, 1), MAX_PER_PAGE)
    query = select(Video).where(Video.user_id == g.user.id).order_by(Video.created_at.desc(), Video.id)
    result = db.paginate(query, page=page, per_page=per_page, error_out=False)
    return jsonify(
        {
            "items": [video_json(v) for v in result.items],
            "page": result.page,
            "per_page": result.per_page,
            "total": result.total,
            "pages": result.pages,
        }
    )


@bp.get("/videos/<video_id>")
@login_required
def get_video(video_id: str) -> Response:
    """Return one of the caller's videos."""
    return jsonify(video_json(_own_video(video_id)))


@bp.post("/videos/<video_id>/retry")
@login_required
def retry_video(video_id: str) -> tuple[Response, int]:
    """Queue a failed video again, if what failed can be cured by a retry and it has retries left."""
    video = _own_video(video_id)
    quotas.claim_retry(video)
    try:
        queued = requeue(video.id, (Status.FAILED,), reset_attempts=True)
    except EnqueueError as exc:
        raise APIError(503, "queue_unavailable", "The processing queue is unreachable; try again shortly.") from exc
    if not queued:
        db.session.refresh(video)
        raise APIError(409, "not_failed", f"Only failed videos can be retried; this one is {video.status}.")
    db.session.refresh(video)
    return jsonify(video_json(video)), 202


@bp.delete("/videos/<video_id>")
@login_required
def delete_video(video_id: str) -> tuple[str, int]:
    """Delete the video's S3 objects, then its row."""
    video = _own_video(video_id)
    storage = get_storage()
    try:
        for prefix in video_prefixes(video.id):
            storage.delete_prefix(prefix)
    except Exception as exc:
        current_app.logger.exception("delete from S3 failed", extra={"video_id": video.id})
        raise APIError(503, "storage_unavailable", "The video could not be deleted; try again shortly.") from exc
    db.session.delete(video)
    db.session.commit()
    return "", 204
