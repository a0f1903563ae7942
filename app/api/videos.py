"""Upload, list, read and delete videos."""

from __future__ import annotations

import functools
import uuid
from typing import Any

from flask import current_app, g, request
from sqlalchemy import and_, bindparam, func, select

from app import idempotency
from app.api import BEARER, bp, error_answers
from app.api.errors import APIError
from app.api.schemas import (
    MAX_TITLE,
    ListArgsSchema,
    UploadAcceptedSchema,
    UploadSchema,
    VideoPageSchema,
    VideoSchema,
)
from app.auth import known_user, login_required, token_required
from app.idempotency import idempotent, route_fingerprint
from app.ratelimit import per_user
from domain import estimates, jobs, optimize, quotas
from domain.extensions import db, get_settings
from domain.models import Status, User, Video
from domain.queue import EnqueueError
from domain.storage import get_storage, video_prefixes
from domain.uploads import accept_upload, queue_stored
from domain.webhooks import video_fields
from ops.sweeper import requeue


def video_json(video: Video, position: int | None) -> dict[str, Any]:
    """Return the public representation of ``video`` at queue ``position``, with presigned URLs."""
    storage = get_storage()
    return {
        **video_fields(video),
        "original_url": storage.url(video.original_key),
        "processed_url": storage.url(video.processed_key),
        "av1_url": storage.url(video.av1_key),
        "poster_url": storage.url(video.poster_key),
        "queue_position": position,
        "seconds_left": estimates.seconds_left(video),
        "upload_id": video.upload_id if video.status == Status.UPLOADING.value else None,
    }


def _video_id(video_id: str) -> str | None:
    """Return the id in its canonical form, or None when it is not a UUID (no such video)."""
    try:
        return str(uuid.UUID(video_id))
    except ValueError:
        return None


def _one_select() -> None:
    """Read in autocommit: a view that sends one SELECT needs no BEGIN and ROLLBACK around it."""
    db.session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})


def _own_video(video_id: str) -> Video:
    canonical = _video_id(video_id)
    video = db.session.get(Video, canonical) if canonical else None
    if video is None or video.user_id != g.user.id:
        raise APIError(404, "not_found", "No such video.")
    return video


def _before_the_body(view: Any) -> Any:
    """Raise the body limit for this route only, and refuse over-quota users before reading a byte."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        request.max_content_length = get_settings().UPLOAD_MAX_CONTENT_LENGTH  # the one large body
        quotas.check_upload(g.user.id, request.content_length or 0)
        db.session.commit()  # no transaction held open while the body is read and probed
        return view(*args, **kwargs)

    return wrapped


def recover_upload(video_id: str) -> tuple[dict[str, Any], int]:
    """Answer a replay of an upload whose first request died after storing its video: from the video."""
    video = db.session.get(Video, video_id)
    if video is None:  # deleted since
        raise APIError(404, "not_found", "The video this request created has been deleted.")
    return accepted(video, queued=True), 202


@bp.route("/videos/upload", methods=["POST"])
@idempotent(route_fingerprint, recover=recover_upload)
@bp.doc(security=BEARER)
@bp.response(202, UploadAcceptedSchema)
@error_answers(400, 401, 413, 415, 422, 429, 503)
@per_user("UPLOAD_LIMIT_PER_USER")
@login_required
@_before_the_body
@bp.arguments(UploadSchema, location="multipart")
def upload(form: dict[str, Any]) -> dict[str, Any]:
    """Upload a clip for processing; the answer comes at once, with the task id.

    The content is checked with ffprobe in a sandbox (415 for what is not an allowed
    video, 422 for one outside the limits); per-user limits answer 429.
    """
    if len(request.files.getlist("video_file")) > 1 or len(request.form.getlist("title")) > 1:
        raise APIError(400, "unexpected_field", "Send one video_file and one title.")
    file, title = form["video_file"], form["title"].strip()
    if not file.filename:
        raise APIError(400, "missing_file", "Send the video as the multipart field 'video_file', with a file name.")
    if not title:
        raise APIError(400, "invalid_title", f"A title of 1 to {MAX_TITLE} characters is required.")
    video = accept_upload(g.user, file, title)
    idempotency.created(video.id)  # committed with the row: a replay never makes a second video
    db.session.commit()  # the row exists before any worker can see the message
    return accepted(video, queue_stored(video))


def accepted(video: Video, queued: bool) -> dict[str, Any]:
    """Answer a stored upload: 202 with its task id, or 503 when the queue did not take it (the sweeper will)."""
    if not queued:
        raise APIError(
            503,
            "queue_unavailable",
            "The video is stored, but the processing queue is unreachable: processing is delayed.",
            {"video_id": video.id, "task_id": video.task_id, "status": video.status},
            final=True,  # the video exists: a retry with the same Idempotency-Key gets this, not a second one
        )
    return {
        "task_id": video.task_id,
        "video_id": video.id,
        "status": video.status,
        "message": "Upload accepted; poll GET /api/videos/{id} for progress.",
    }


# The list page, which the web page polls: the token's user, one page of its videos with their
# queue positions, and how many it has (a window over all of them, counted before the page is
# cut), in one statement. A user without videos gets one row, its video None.
_PAGE_READ = (
    select(User, Video, estimates.POSITION, func.count(Video.id).over())
    .outerjoin(Video, Video.user_id == User.id)
    .where(User.id == bindparam("user_id"))
    .order_by(Video.created_at.desc(), Video.id)
    .limit(bindparam("limit"))
    .offset(bindparam("offset"))
)
# A page past the last one has no rows: the user and the count alone.
_PAST_THE_END = (
    select(User, func.count(Video.id))
    .outerjoin(Video, Video.user_id == User.id)
    .where(User.id == bindparam("user_id"))
    .group_by(User.id)
)


@bp.route("/videos", methods=["GET"])
@bp.doc(security=BEARER)
@bp.arguments(ListArgsSchema, location="query")
@bp.response(200, VideoPageSchema)
@error_answers(400, 401)
@token_required
def list_videos(args: dict[str, Any]) -> dict[str, Any]:
    """List the caller's videos, newest first."""
    page, per_page = args["page"], args["per_page"]
    params = {"user_id": g.user_id, "limit": per_page, "offset": (page - 1) * per_page}
    _one_select()
    rows = db.session.execute(_PAGE_READ, params).all()
    if rows:
        user, total = rows[0][0], rows[0][3]
    else:
        user, total = db.session.execute(_PAST_THE_END, params).one_or_none() or (None, 0)
    g.user = known_user(user)
    return {
        "items": [video_json(video, position) for _, video, position, _ in rows if video is not None],
        "page": page,
        "per_page": per_page,
        "total": total,
        "pages": -(-total // per_page),
    }


# The status read, which clients poll: the token's user, its video and the video's queue position in
# one statement (one round trip to the database instead of three).
_STATUS_READ = (
    select(User, Video, estimates.POSITION)
    .outerjoin(Video, and_(Video.id == bindparam("video_id"), Video.user_id == User.id))
    .where(User.id == bindparam("user_id"))
)


@bp.route("/videos/<video_id>", methods=["GET"])
@bp.doc(security=BEARER)
@bp.response(200, VideoSchema)
@error_answers(401, 404)
@token_required
def get_video(video_id: str) -> dict[str, Any]:
    """Return one of the caller's videos: status, progress, and presigned URLs of the results."""
    params = {"user_id": g.user_id, "video_id": _video_id(video_id)}
    _one_select()
    user, video, position = db.session.execute(_STATUS_READ, params).one_or_none() or (None, None, None)
    g.user = known_user(user)
    if video is None:
        raise APIError(404, "not_found", "No such video.")
    return video_json(video, position)


@bp.route("/videos/<video_id>/retry", methods=["POST"])
@bp.doc(security=BEARER)
@bp.response(202, VideoSchema)
@error_answers(401, 404, 409, 429, 503)
@login_required
def retry_video(video_id: str) -> dict[str, Any]:
    """Queue a failed video again, if a retry can cure what failed and it has retries left."""
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
    return video_json(video, estimates.queue_position(video))


@bp.route("/videos/<video_id>/cancel", methods=["POST"])
@bp.doc(security=BEARER)
@bp.response(200, VideoSchema)
@error_answers(401, 404, 409)
@login_required
def cancel_video(video_id: str) -> dict[str, Any]:
    """Cancel a video that has not ended: a waiting one is never started, a running one stops within seconds.

    A published video's optimize stage that has not ended is cancelled instead: the published video stays.
    """
    video = _own_video(video_id)
    if not (jobs.cancel(video.id) or optimize.cancel(video.id)):
        db.session.refresh(video)
        raise APIError(
            409,
            "not_cancellable",
            f"Only waiting or processing videos (or an optimization under way) can be cancelled; this one is "
            f"{video.status}.",
        )
    db.session.refresh(video)
    return video_json(video, estimates.queue_position(video))


@bp.route("/videos/<video_id>", methods=["DELETE"])
@bp.doc(security=BEARER)
@bp.response(204)
@error_answers(401, 404)
@login_required
def delete_video(video_id: str) -> None:
    """Delete the video's row, then its S3 objects (those S3 keeps, the sweeper deletes: they have no row)."""
    video = _own_video(video_id)
    key, s3_upload = video.original_key, video.s3_upload_id
    db.session.delete(video)
    db.session.commit()  # gone for good before its objects: never a row without its original
    storage = get_storage()
    try:
        if s3_upload:  # a direct upload still open: S3 keeps its parts until aborted
            storage.abort_multipart(key, s3_upload)
        for prefix in video_prefixes(video_id):
            storage.delete_prefix(prefix)
    except Exception:  # objects with no row: the sweeper's reconcile deletes them
        current_app.logger.exception("delete from S3 failed; the sweeper will", extra={"video_id": video_id})
