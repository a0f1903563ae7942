"""Reconcile the database with SQS and S3: rows whose message is gone, objects and uploads with no row.

Each pass reads the other side, then changes only what its own guard still finds true: a
row moves with one conditional UPDATE (``domain/jobs.py``), and an object or a multipart upload
is removed only when it is older than ``ORPHAN_AFTER_SECONDS`` (a form upload writes its
object before its row, a direct upload starts S3's upload before its row) and its row is
still missing when looked up right before. The caller (the sweeper) commits.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from config import Settings
from domain import jobs
from domain.extensions import db
from domain.models import Status, Video, utcnow
from domain.storage import ORIGINALS, Storage, aws_client, processed_video_key
from ops import dlq
from ops.aws import queue_url
from ops.metrics import COUNTS

logger = logging.getLogger(__name__)
# Top-level prefixes whose next path segment is a video id.
VIDEO_PREFIXES = (ORIGINALS, processed_video_key("").split("/", 1)[0] + "/")
LOOKUP_CHUNK = 1000  # ids per IN (...): far below any database's bound parameters
ORPHANS_PER_PASS = 1000
# Orphans come from failures, a few at a time. Most of the listed videos without a row means the
# database is not this bucket's (a wrong DATABASE_URL, a restored backup): delete nothing, say so.
BRAKE_SHARE, BRAKE_MIN = 0.5, 20


def dead_lettered(settings: Settings) -> list[str]:
    """Fail, with the retryable ``dead_lettered``, the ``queued`` rows whose message is in the dead-letter queue."""
    grace = settings.SWEEP_AFTER_SECONDS
    dead = {(row["video_id"], row["task_id"]) for row in dlq.list_dead(settings)}
    letters = sorted((v, t) for v, t in dead if isinstance(v, str) and isinstance(t, str))
    failed = [video_id for video_id, task_id in letters if jobs.dead_letter(video_id, task_id, grace)]
    for video_id in failed:
        logger.warning("message dead-lettered; video failed", extra={"video_id": video_id, "code": "dead_lettered"})
    return failed


def lost_messages(settings: Settings) -> list[str]:
    """Return the ``queued`` rows whose message is gone: older than the sweep's grace, while the queue holds none.

    SQS can't be asked for one message, but an empty queue (nothing waiting, in flight or
    delayed) holds none of them. A message too many is harmless (the claim lets one run).
    """
    sqs = aws_client("sqs", settings)
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url(settings, sqs), AttributeNames=COUNTS)["Attributes"]
    if any(int(attributes.get(name, 0)) for name in COUNTS):
        return []
    older = utcnow() - timedelta(seconds=settings.SWEEP_AFTER_SECONDS)
    found = select(Video.id).where(Video.status == Status.QUEUED.value, Video.updated_at < older)
    return list(db.session.scalars(found).all())


def _unknown(video_ids: set[str]) -> set[str]:
    """Return those of ``video_ids`` that have no row (looked up a chunk at a time)."""
    ids, known = sorted(video_ids), set[str]()
    for start in range(0, len(ids), LOOKUP_CHUNK):
        chunk = ids[start : start + LOOKUP_CHUNK]
        known.update(db.session.scalars(select(Video.id).where(Video.id.in_(chunk))).all())
    return video_ids - known


def _old(when: datetime, settings: Settings) -> bool:
    return when < utcnow() - timedelta(seconds=settings.ORPHAN_AFTER_SECONDS)


def orphan_objects(storage: Storage, settings: Settings) -> list[str]:
    """Delete the objects of videos that have no row (originals and outputs), older than the grace; return the ids."""
    by_video: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for prefix in VIDEO_PREFIXES:
        for obj in storage.objects(prefix):
            video_id = obj["Key"][len(prefix) :].partition("/")[0]
            by_video[video_id].append(obj)
    candidates = {vid for vid, objs in by_video.items() if all(_old(obj["LastModified"], settings) for obj in objs)}
    gone = sorted(_unknown(candidates))
    if len(gone) >= BRAKE_MIN and len(gone) > BRAKE_SHARE * len(by_video):
        logger.error(
            "most objects have no row: is this the bucket's database? nothing deleted",
            extra={"orphans": len(gone), "videos": len(by_video)},
        )
        return []
    gone = gone[:ORPHANS_PER_PASS]
    for video_id in gone:
        for prefix in VIDEO_PREFIXES:
            storage.delete_prefix(f"{prefix}{video_id}/")
        logger.warning("objects with no row deleted", extra={"video_id": video_id})
    return gone


def orphan_uploads(storage: Storage, settings: Settings) -> list[str]:
    """Abort the multipart uploads under ``originals/`` that no row holds, older than the grace; return their keys."""
    uploads = [u for u in storage.multipart_uploads(ORIGINALS) if _old(u["Initiated"], settings)]
    if not uploads:
        return []
    held = set(db.session.scalars(select(Video.s3_upload_id).where(Video.s3_upload_id.is_not(None))).all())
    aborted = []
    for upload in uploads:
        if upload["UploadId"] in held:
            continue
        storage.abort_multipart(upload["Key"], upload["UploadId"])
        aborted.append(upload["Key"])
        logger.warning("multipart upload with no row aborted", extra={"key": upload["Key"]})
    return aborted


def stale_renditions(storage: Storage, settings: Settings) -> list[str]:
    """Delete a published video's outputs that its row no longer names, older than the grace; return their keys.

    What an optimize attempt wrote and never published (its worker died between its upload and
    its move), and the fast file the renditions replaced, once no URL handed out before the move
    can name it (``PRESIGNED_URL_EXPIRES`` after ``optimized_at``): a player that loaded it plays
    on. Only for ``processed`` rows: a video being processed again writes its outputs before its
    row names them.
    """
    handed_out = utcnow() - timedelta(seconds=settings.PRESIGNED_URL_EXPIRES)
    prefix = VIDEO_PREFIXES[1]
    by_video: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for obj in storage.objects(prefix):
        by_video[obj["Key"][len(prefix) :].partition("/")[0]].append(obj)
    ids, removed = sorted(by_video), []
    for start in range(0, len(ids), LOOKUP_CHUNK):
        named = select(Video.id, Video.optimized_at, Video.processed_key, Video.av1_key, Video.poster_key).where(
            Video.id.in_(ids[start : start + LOOKUP_CHUNK]), Video.status == Status.PROCESSED.value
        )
        for video_id, optimized_at, *keys in db.session.execute(named).all():
            if optimized_at is not None and optimized_at > handed_out:
                continue  # URLs to the fast file may still be out there
            for obj in by_video[video_id]:
                if obj["Key"] not in keys and _old(obj["LastModified"], settings):
                    storage.delete(obj["Key"])
                    removed.append(obj["Key"])
                    logger.warning("output the row no longer names deleted", extra={"key": obj["Key"]})
    return removed
