"""What a video's owner is told while waiting: its place in the queue, the time its processing has left."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import bindparam, case, func, select
from sqlalchemy.orm import aliased

from domain.extensions import db
from domain.models import Status, Video, utcnow

WAITING = (Status.UPLOADED.value, Status.QUEUED.value)


_AHEAD = aliased(Video)
#: A waiting video's place in the queue (None for any other), for a statement selecting ``Video``.
#: Built once: a statement with a new alias each call costs more in Python than the query takes.
POSITION = case(
    (
        Video.status.in_(WAITING),
        select(func.count() + 1)
        .where(_AHEAD.status.in_(WAITING), _AHEAD.created_at < Video.created_at)
        .correlate(Video)
        .scalar_subquery(),
    ),
    else_=None,
)
_POSITION_OF = select(POSITION).where(Video.id == bindparam("video_id"))


def queue_position(video: Video) -> int | None:
    """Return the video's place among the waiting videos (1 = next), or None when it isn't waiting.

    Approximate: the number of waiting videos uploaded before it, plus one. A standard SQS
    queue is only roughly first in, first out, and several workers take videos at once. The
    count comes from the (status, created_at) index; the list and status reads select
    ``POSITION`` with their videos instead.
    """
    if video.status not in WAITING:
        return None
    place = db.session.scalar(_POSITION_OF, {"video_id": video.id})
    return None if place is None else int(place)  # None: taken meanwhile


def seconds_left(video: Video, now: datetime | None = None) -> float | None:
    """Return the processing time left, from the pace so far (None when not processing or too early to say).

    Progress is linear in output time, so time left = time taken * (100 - progress) / progress.
    """
    if video.status != Status.PROCESSING.value or not video.started_at or not 0 < video.progress < 100:
        return None
    taken = ((now or utcnow()) - video.started_at).total_seconds()
    return round(max(0.0, taken * (100 - video.progress) / video.progress), 1)
