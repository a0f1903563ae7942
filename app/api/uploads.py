"""Direct, resumable uploads: start, resume, complete and abort an S3 multipart upload."""

from __future__ import annotations

import uuid
from typing import Any

from flask import g
from sqlalchemy import select

from app.api import BEARER, bp, error_answers
from app.api.errors import APIError
from app.api.schemas import (
    DirectUploadSchema,
    PartsSchema,
    UploadAcceptedSchema,
    UploadStartSchema,
)
from app.api.videos import accepted
from app.auth import login_required
from app.idempotency import idempotent, json_fingerprint
from app.ratelimit import per_user
from domain import direct
from domain.extensions import db
from domain.models import Status, Video
from domain.uploads import queue_stored


def _own_upload(upload_id: str) -> Video:
    try:
        upload_id = str(uuid.UUID(upload_id))
    except ValueError:
        raise APIError(404, "not_found", "No such upload.") from None
    video = db.session.scalar(select(Video).where(Video.upload_id == upload_id))
    if video is None or video.user_id != g.user.id:
        raise APIError(404, "not_found", "No such upload.")
    return video


def _owned_by(user_id: int, upload_id: str) -> bool:
    """Return whether ``upload_id`` names one of the user's uploads (an ``Idempotency-Key`` is stored only then)."""
    try:
        upload_id = str(uuid.UUID(upload_id))
    except ValueError:
        return False
    found = db.session.scalar(select(Video.id).where(Video.upload_id == upload_id, Video.user_id == user_id))
    return found is not None


def _uploading(video: Video) -> Video:
    if video.status != Status.UPLOADING.value:
        raise APIError(409, "not_uploading", f"This upload is over; the video is {video.status}.")
    return video


@bp.route("/uploads", methods=["POST"])
@idempotent(json_fingerprint)
@bp.doc(security=BEARER)
@bp.arguments(UploadStartSchema)
@bp.response(201, DirectUploadSchema)
@error_answers(400, 401, 409, 413, 415, 422, 429, 503)
@per_user("UPLOAD_LIMIT_PER_USER")
@login_required
def start_upload(body: dict[str, Any]) -> dict[str, Any]:
    """Start a direct upload: presigned PUT URLs for every part, to send straight to S3.

    PUT each part's bytes (``part_size`` each, the last one shorter) to its URL and keep the
    ``ETag`` header S3 answers with; then ``POST /api/uploads/{id}/complete``. Limits and
    quotas are checked on the declared size (413, 429), the content when it is complete.
    """
    title = body["title"].strip()
    if not title:
        raise APIError(400, "invalid_title", "A title with more than spaces is required.")
    video = direct.start(g.user, title, body["filename"], body["size"], body["content_type"])
    return direct.describe(video)


@bp.route("/uploads/<upload_id>", methods=["GET"])
@bp.doc(security=BEARER)
@bp.response(200, DirectUploadSchema)
@error_answers(401, 404, 409, 429, 503)
@per_user("UPLOAD_RESUME_LIMIT_PER_USER")
@login_required
def upload_state(upload_id: str) -> dict[str, Any]:
    """Resume: the parts S3 already has, and fresh URLs for the missing ones."""
    video = _uploading(_own_upload(upload_id))
    return direct.describe(video, direct.sent_parts(video))


@bp.route("/uploads/<upload_id>/complete", methods=["POST"])
@per_user("UPLOAD_COMPLETE_LIMIT_PER_USER")
@idempotent(json_fingerprint, owns=lambda user_id, upload_id: _owned_by(user_id, upload_id))
@bp.doc(security=BEARER)
@bp.arguments(PartsSchema)
@bp.response(202, UploadAcceptedSchema)
@error_answers(400, 401, 404, 409, 415, 422, 429, 503)
@login_required
def complete_upload(body: dict[str, Any], upload_id: str) -> dict[str, Any]:
    """Complete the upload from the parts' ETags; the video is checked and queued for processing.

    400 ``size_mismatch`` and 415 ``not_a_video`` end the video ``failed`` and quarantine what
    was sent; a video the worker's probe refuses ends ``failed`` with the form upload's codes.
    A complete racing this upload's abort either wins, or answers 409.
    """
    video = _uploading(_own_upload(upload_id))
    direct.claim(video, body["parts"])
    db.session.commit()  # from here an abort or an expiry of this upload loses
    video = direct.complete(video, body["parts"])
    db.session.commit()  # the row is stored before any worker can see its message
    return accepted(video, queue_stored(video))


@bp.route("/uploads/<upload_id>", methods=["DELETE"])
@bp.doc(security=BEARER)
@bp.response(204)
@error_answers(401, 404, 409, 503)
@login_required
def abort_upload(upload_id: str) -> None:
    """Abort the upload: the video is gone, and S3 drops the parts (409 when a complete took it first)."""
    direct.abort(_uploading(_own_upload(upload_id)))
