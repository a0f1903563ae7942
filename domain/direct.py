"""Direct uploads: the client sends the bytes to S3 in parts, through presigned URLs.

The API only starts the S3 multipart upload, signs the part URLs, and completes it; no
byte of the video passes through a web process. Then the object is checked where that is
cheap and safe: its real size against the declared one, and its first 64 KiB (one ranged
GET) for a container signature (``media.sniff``). A plainly wrong file is refused at once
and quarantined (``Storage.quarantine``: kept until the bucket's lifecycle rule expires it);
the rest is probed in the worker's sandbox with the form upload's rules (``media.validate``),
and a video refused there ends ``failed`` with the same codes, its original quarantined too.
Running ffprobe in the web tier would mean letting it read from the network, or copying up
to ``MAX_UPLOAD_BYTES`` through the web tier: the very thing this path avoids.

An upload not completed by ``upload_expires_at`` is aborted and its row removed by the
sweeper; the bucket's lifecycle rule (abort incomplete multipart uploads after a day) is
the backstop.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import select

from config import Settings
from domain import jobs, quotas
from domain.errors import Conflict, DomainError, Invalid, NotAVideo, OverLimit, TooLarge, Unavailable
from domain.extensions import db, get_settings
from domain.models import Status, User, Video, new_id, utcnow
from domain.storage import get_storage, original_key
from domain.uploads import CONTENT_TYPES, clean_filename, record
from media.sniff import HEAD_BYTES, may_be

logger = logging.getLogger(__name__)
MiB = 1024**2
MIN_PART_BYTES = 5 * MiB  # S3's least part size (but for the last part)
MAX_PARTS = 1000  # far below S3's 10 000, so that one answer lists every part's URL
# What S3 answers about the parts a client says it sent: the client's mistake, not ours.
BAD_PARTS = {"InvalidPart", "InvalidPartOrder", "EntityTooSmall", "NoSuchUpload", "MalformedXML"}
# What a video may be declared as: anything a player would call video, or no idea.
GENERIC_TYPES = {"application/octet-stream", "binary/octet-stream"}


def part_size(size: int, preferred: int) -> int:
    """Return the part size for ``size`` bytes: ``preferred``, larger when that would make too many parts."""
    least = -(-size // MAX_PARTS)
    return -(-max(preferred, least, MIN_PART_BYTES) // MiB) * MiB


def part_count(size: int, part: int) -> int:
    """Return how many parts ``size`` bytes make (at least one)."""
    return max(1, -(-size // part))


def _storage_unavailable(exc: Exception) -> Unavailable:
    logger.warning("S3 unavailable", extra={"error": repr(exc)})
    return Unavailable("storage_unavailable", "The storage is unreachable; try again shortly.")


def start(user: User, title: str, filename: str, size: int, content_type: str) -> Video:
    """Check the declared upload against the limits, start its S3 multipart upload and add its row.

    Return the row, detached from the session; the caller commits.
    """
    config = get_settings()
    if size > config.MAX_UPLOAD_BYTES:
        raise TooLarge("file_too_large", f"The upload exceeds the limit of {config.MAX_UPLOAD_BYTES} bytes.")
    if size < 1:
        raise NotAVideo("not_a_video", "The file is empty.")
    content_type = content_type.split(";", 1)[0].strip().lower()
    if not content_type.startswith("video/") and content_type not in GENERIC_TYPES:
        raise NotAVideo("not_a_video", f"A {content_type or 'typeless'} file is not a video.")
    quotas.check_upload(user.id, size)
    video_id, name = new_id(), clean_filename(filename)
    extension = (name or "").rpartition(".")[2].lower()
    key = original_key(video_id, name, extension if extension in CONTENT_TYPES else "mp4")
    part = part_size(size, config.UPLOAD_PART_BYTES)
    storage = get_storage()
    try:
        s3_upload = storage.start_multipart(key, CONTENT_TYPES.get(extension, "application/octet-stream"))
    except (ClientError, BotoCoreError) as exc:
        raise _storage_unavailable(exc) from exc
    try:  # again, under the user's lock (held until the caller's commit, not across the S3 call above)
        quotas.check_upload(user.id, size, lock=True)
    except OverLimit:
        _abort_s3(video_id, key, s3_upload)
        raise
    video = Video(
        id=video_id,
        user_id=user.id,
        title=title,
        status=Status.UPLOADING.value,
        original_key=key,
        original_filename=name,
        size_bytes=size,
        upload_id=new_id(),
        s3_upload_id=s3_upload,
        part_size=part,
        upload_expires_at=utcnow() + timedelta(seconds=config.UPLOAD_EXPIRES_SECONDS),
    )
    record(video)  # if the commit never comes, the sweeper aborts the S3 upload no row holds
    logger.info("direct upload started", extra={"video_id": video_id, "bytes": size, "part_size": part})
    return video


def describe(video: Video, sent: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Return the upload's state: the parts S3 has (``sent``), and fresh URLs for the others."""
    assert video.s3_upload_id and video.part_size and video.size_bytes and video.upload_expires_at
    storage = get_storage()
    done = {p["part_number"] for p in sent or []}
    expires = video.upload_expires_at
    seconds = max(1, min(get_settings().PRESIGNED_URL_EXPIRES, int((expires - utcnow()).total_seconds())))
    size, part = video.size_bytes, video.part_size
    count = part_count(size, part)

    def length(n: int) -> int:  # every part is part_size bytes but the last, which is the rest
        return part if n < count else size - part * (count - 1)

    key, upload = video.original_key, video.s3_upload_id
    urls = [
        {"part_number": n, "size": length(n), "url": storage.part_url(key, upload, n, seconds, length(n))}
        for n in range(1, count + 1)
        if n not in done
    ]
    return {
        "upload_id": video.upload_id,
        "video_id": video.id,
        "size": video.size_bytes,
        "part_size": video.part_size,
        "parts": urls,
        "parts_done": sent or [],
        "expires_at": expires.isoformat(),
    }


def sent_parts(video: Video) -> list[dict[str, Any]]:
    """Return the parts S3 already has: ``part_number``, ``size``, ``etag``."""
    assert video.s3_upload_id
    try:
        parts = get_storage().list_parts(video.original_key, video.s3_upload_id)
    except (ClientError, BotoCoreError) as exc:
        raise _storage_unavailable(exc) from exc
    return [{"part_number": p["PartNumber"], "size": p["Size"], "etag": p["ETag"]} for p in parts]


def _refuse(video: Video, error: DomainError) -> DomainError:
    """End the upload ``failed`` with the error's code, its object quarantined (never deleted in line); return it."""
    moved = get_storage().quarantine(video.id)
    jobs.refuse_upload(video.id, error.code, error.message, moved)
    logger.info("direct upload refused", extra={"video_id": video.id, "code": error.code})
    return error


def _over(video_id: str) -> Conflict:
    status = db.session.scalar(select(Video.status).where(Video.id == video_id)) or "deleted"
    return Conflict("not_uploading", f"This upload is over; the video is {status}.")


def _join(video: Video, parts: list[dict[str, Any]]) -> None:
    """Complete the S3 multipart upload; one that an earlier complete of ours finished counts as done."""
    assert video.s3_upload_id
    storage = get_storage()
    try:
        storage.complete_multipart(
            video.original_key, video.s3_upload_id, [(p["part_number"], p["etag"]) for p in parts]
        )
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "NoSuchUpload" and storage.exists(video.original_key):  # a retry after the join succeeded
            return
        if code not in BAD_PARTS:
            raise _storage_unavailable(exc) from exc
        raise Invalid("invalid_parts", f"S3 refused the parts ({code}): send each part's own ETag.") from exc
    except BotoCoreError as exc:
        raise _storage_unavailable(exc) from exc


def claim(video: Video, parts: list[dict[str, Any]]) -> None:
    """Check the parts' list and take the row for its complete (``completing``); the caller commits.

    From that commit on, an abort or an expiry racing this complete finds nothing to remove
    (``Conflict``), and a second complete nothing to complete. ``video`` is detached, as read.
    """
    assert video.s3_upload_id and video.part_size and video.size_bytes
    count = part_count(video.size_bytes, video.part_size)
    numbers = [p["part_number"] for p in parts]
    if numbers != list(range(1, count + 1)):
        raise Invalid("invalid_parts", f"Send the ETag of every part, 1 to {count}, in order.")
    db.session.expunge(video)  # handed on as read (``queue_stored``): no commit expires it
    if not jobs.begin_complete(video.id):
        raise _over(video.id)


def complete(video: Video, parts: list[dict[str, Any]]) -> Video:
    """Join a claimed upload's parts, check the object and mark it ``uploaded``; return the row, detached.

    The caller commits, then enqueues (``queue_stored``). On a failure the row is reopened (the
    client may complete again) or refused (``failed``, its object quarantined) before the error
    is raised: the caller commits that too.
    """
    assert video.size_bytes
    try:
        _join(video, parts)
        head, real = get_storage().head_bytes(video.original_key, HEAD_BYTES)
    except (ClientError, BotoCoreError) as exc:  # S3 unreachable, a read timed out or broke off
        jobs.reopen(video.id)
        raise _storage_unavailable(exc) from exc
    except DomainError:
        jobs.reopen(video.id)
        raise
    if real != video.size_bytes:
        declared = video.size_bytes
        quotas.settle(video.id, real)
        raise _refuse(video, Invalid("size_mismatch", f"The upload is {real} bytes, not the {declared} declared."))
    if not may_be(head, get_settings().VIDEO_ALLOWED_FORMATS):
        raise _refuse(video, NotAVideo("not_a_video", "The file is not a readable video."))
    if not jobs.upload_done(video.id):
        raise _over(video.id)
    video.status = Status.UPLOADED.value
    logger.info("direct upload stored", extra={"video_id": video.id, "task_id": video.task_id, "bytes": real})
    return video


def abort(video: Video) -> None:
    """Remove the row of an upload still ``uploading`` (``Conflict`` when a complete took it), then abort S3's.

    The row goes first (its lock holds off a racing complete until the caller commits): an S3
    upload left by a failed abort has no row, and the sweeper aborts it (``reconcile``); a row
    left with no S3 upload could never be completed.
    """
    assert video.s3_upload_id
    key, s3_upload = video.original_key, video.s3_upload_id
    if not jobs.discard_upload(video.id):
        raise _over(video.id)
    try:
        sent = sum(int(part["Size"]) for part in get_storage().list_parts(key, s3_upload))
        quotas.settle(video.id, sent)  # what S3 received stays counted; the rest is refunded
    except (ClientError, BotoCoreError) as exc:  # counted as declared
        logger.warning("parts not listed", extra={"video_id": video.id, "error": repr(exc)})
    _abort_s3(video.id, key, s3_upload)


def _abort_s3(video_id: str, key: str, s3_upload: str) -> None:
    """Abort an S3 multipart upload; when S3 can't be reached, the sweeper aborts it (it has no row)."""
    try:
        get_storage().abort_multipart(key, s3_upload)
    except (ClientError, BotoCoreError) as exc:
        logger.warning("abort failed; the sweeper aborts it", extra={"video_id": video_id, "error": repr(exc)})


def expire(settings: Settings) -> list[str]:
    """Abort the uploads past ``upload_expires_at``, and reopen completes that died; return the expired ids.

    The caller commits.
    """
    # A complete that died may have had S3 join the parts: its client gets a full new deadline to complete
    # again (``_join`` takes the joined object), so this pass's expiry never removes what S3 holds whole.
    deadline = utcnow() + timedelta(seconds=settings.UPLOAD_EXPIRES_SECONDS)
    for video_id in db.session.scalars(select(Video.id).where(Video.status == Status.COMPLETING.value)).all():
        if jobs.reopen(video_id, stale_after=settings.ORPHAN_AFTER_SECONDS, deadline=deadline):
            logger.warning("complete never ended; upload reopened", extra={"video_id": video_id})
    overdue = db.session.scalars(
        select(Video).where(Video.status == Status.UPLOADING.value, Video.upload_expires_at < utcnow())
    ).all()
    gone = []
    for video in overdue:
        try:
            abort(video)
        except Conflict:  # completed meanwhile
            continue
        gone.append(video.id)
        logger.info("direct upload expired", extra={"video_id": video.id})
    return gone
