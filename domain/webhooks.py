"""Webhooks: users' endpoints, the events outbox, and each delivery's state.

A video's move to a final state (``processed``, ``failed``, ``cancelled``) writes, in the
transaction that makes it (``jobs`` calls ``record``), one event and a delivery for each of
its owner's endpoints that wants it: an outbox. Only after that transaction commits are the
deliveries' messages sent to the webhooks queue (``_send_after_commit``), so a change that
rolls back sends nothing, and the sweeper resends a delivery whose message was lost (``relay``).
``tasks/webhooks.py`` makes the POSTs and reports each one here (``claim``, ``settle``).

Signatures follow Stripe's scheme: ``Videoproc-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256
of "<t>.<body>">``, with one ``v1`` per secret in use (two for a day after a rotation).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import CursorResult, and_, delete, event, func, select, update
from sqlalchemy.orm import Session, aliased

from config import Settings
from domain import egress, optimize
from domain.errors import Conflict, Invalid, NotFound
from domain.extensions import db, get_settings
from domain.models import (
    Status,
    User,
    Video,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    new_id,
    utcnow,
)

logger = logging.getLogger(__name__)

EVENT_OF = {Status.PROCESSED: "video.processed", Status.FAILED: "video.failed", Status.CANCELLED: "video.cancelled"}
EVENTS = tuple(EVENT_OF.values())
PENDING, SUCCEEDED, FAILED = "pending", "succeeded", "failed"
ROTATION = timedelta(hours=24)  # how long a rotated-out secret keeps signing
BACKOFF_MAX = 3600.0  # the longest wait between two attempts
UNFINISHED = "no answer recorded: the worker stopped during the attempt"
_TO_SEND = "webhook_deliveries_to_send"  # the session's ``info`` key: deliveries to send once committed


def iso(value: datetime | None) -> str | None:
    """Return ``value`` in ISO 8601, or None."""
    return value.isoformat() if value is not None else None


def video_fields(video: Video) -> dict[str, Any]:
    """Return what the API shows of ``video`` that is not presigned (URLs) or live (queue position)."""
    error = {"code": video.error_code, "message": video.error_message} if video.error_code else None
    return {
        "id": video.id,
        "title": video.title,
        "status": video.status,
        "progress": video.progress,
        "task_id": video.task_id,
        "created_at": iso(video.created_at),
        "processed_at": iso(video.processed_at),
        "error": error,
        "optimization": _optimization(video),
    }


def _optimization(video: Video) -> dict[str, Any] | None:
    """Return the optimize stage as the API shows it; None when the video has none (``OPTIMIZE=off``, not published)."""
    if video.optimize_status is None:
        return None
    return {
        "status": video.optimize_status,
        "progress": video.optimize_progress,
        "optimized_at": iso(video.optimized_at),
        "error": video.optimize_error,
        "renditions": optimize.renditions(video),
        "cpu_seconds": optimize.cpu_seconds(video),
    }


def new_secret() -> str:
    """Return a new signing secret."""
    return "whsec_" + secrets.token_urlsafe(32)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Return the hex HMAC-SHA256 of ``"<timestamp>.<body>"`` under ``secret``."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(keys: list[str], timestamp: int, body: bytes) -> str:
    """Return the ``Videoproc-Signature`` value: the time and one ``v1`` per secret."""
    return ",".join([f"t={timestamp}", *(f"v1={sign(key, timestamp, body)}" for key in keys)])


def signing_secrets(endpoint: WebhookEndpoint, now: datetime) -> list[str]:
    """Return the secrets that sign for ``endpoint`` now: its own, and a rotated-out one for its last day."""
    keys = [endpoint.secret]
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret and expires is not None and expires > now:
        keys.append(endpoint.previous_secret)
    return keys


# Endpoints


def check_url(url: str, settings: Settings) -> None:
    """Refuse a receiver URL that could never be called (scheme, host, an address it names or resolves to).

    A name that does not resolve yet is accepted: every delivery resolves and checks it again.
    """
    allow_local = settings.WEBHOOK_ALLOW_LOCAL
    problem = egress.url_problem(url, allow_local)
    if problem is None:
        try:
            egress.resolve(*egress.host_port(url), allow_local)
        except egress.Refused as exc:
            if "does not resolve" not in str(exc):
                problem = str(exc)
    if problem:
        raise Invalid("url_not_allowed", f"This URL can't receive webhooks: {problem}.")


def create_endpoint(user_id: int, url: str, events: list[str] | None) -> WebhookEndpoint:
    """Add an endpoint for ``events`` (all by default) at ``url``; the caller shows its secret once."""
    settings = get_settings()
    check_url(url, settings)
    db.session.get(User, user_id, with_for_update=True)  # one add at a time per user: the limit holds
    count = db.session.scalar(select(func.count()).where(WebhookEndpoint.user_id == user_id))
    if (count or 0) >= settings.WEBHOOK_MAX_ENDPOINTS:
        raise Conflict(
            "too_many_endpoints", f"An account can have {settings.WEBHOOK_MAX_ENDPOINTS} endpoints; delete one first."
        )
    wanted = [e for e in EVENTS if e in set(events or EVENTS)]
    endpoint = WebhookEndpoint(
        id=new_id(), user_id=user_id, url=url, events=",".join(wanted), secret=new_secret(), created_at=utcnow()
    )
    db.session.add(endpoint)
    return endpoint


def _canonical(identifier: str) -> str | None:
    """Return a UUID in its canonical form, or None when it is none (no such thing: 404, never a database error)."""
    try:
        return str(uuid.UUID(identifier))
    except ValueError:
        return None


def own_endpoint(user_id: int, endpoint_id: str) -> WebhookEndpoint:
    """Return the user's endpoint, or raise ``NotFound``."""
    canonical = _canonical(endpoint_id)
    endpoint = db.session.get(WebhookEndpoint, canonical) if canonical else None
    if endpoint is None or endpoint.user_id != user_id:
        raise NotFound("not_found", "No such webhook endpoint.")
    return endpoint


def list_endpoints(user_id: int) -> list[WebhookEndpoint]:
    """Return the user's endpoints, oldest first."""
    query = select(WebhookEndpoint).where(WebhookEndpoint.user_id == user_id).order_by(WebhookEndpoint.created_at)
    return list(db.session.scalars(query))


def delete_endpoint(endpoint: WebhookEndpoint) -> None:
    """Delete ``endpoint`` and its deliveries (their events stay until pruned: other endpoints may share them)."""
    mine = select(WebhookDelivery.id).where(WebhookDelivery.endpoint_id == endpoint.id)
    db.session.execute(delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(mine)))
    db.session.execute(delete(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id))
    db.session.delete(endpoint)


def rotate_secret(endpoint: WebhookEndpoint) -> WebhookEndpoint:
    """Give ``endpoint`` a new secret; the old one signs beside it for ``ROTATION``."""
    endpoint.previous_secret, endpoint.secret = endpoint.secret, new_secret()
    endpoint.previous_secret_expires_at = utcnow() + ROTATION
    return endpoint


def enable(endpoint: WebhookEndpoint) -> WebhookEndpoint:
    """Turn a disabled endpoint back on (new events reach it again; failed deliveries can be redelivered)."""
    endpoint.disabled_at, endpoint.disabled_reason, endpoint.failed_in_a_row = None, None, 0
    return endpoint


# The outbox


def record(video_id: str, status: Status) -> None:
    """Write the event of ``video_id``'s move to ``status`` and its deliveries, in the caller's transaction."""
    video = db.session.execute(
        select(Video).where(Video.id == video_id).execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if video is None:
        return
    kind = EVENT_OF[status]
    # Only the columns that pick the endpoints: the worker's database user may read no more (deploy/migrate.py).
    mine = select(WebhookEndpoint.id, WebhookEndpoint.events).where(
        WebhookEndpoint.user_id == video.user_id, WebhookEndpoint.disabled_at.is_(None)
    )
    endpoints = [endpoint_id for endpoint_id, events in db.session.execute(mine) if kind in events.split(",")]
    if not endpoints:
        return
    now, event_id = utcnow(), new_id()
    body = {"id": event_id, "type": kind, "created_at": iso(now), "data": {"video": video_fields(video)}}
    db.session.add(
        WebhookEvent(
            id=event_id,
            user_id=video.user_id,
            video_id=video_id,
            type=kind,
            body=json.dumps(body, separators=(",", ":")),
            created_at=now,
        )
    )
    deliveries = [
        WebhookDelivery(
            id=new_id(), endpoint_id=e, event_id=event_id, video_id=video_id, created_at=now, next_attempt_at=now
        )
        for e in endpoints
    ]
    db.session.add_all(deliveries)
    _send_once_committed([d.id for d in deliveries])


def _send_once_committed(delivery_ids: list[str]) -> None:
    db.session.info.setdefault(_TO_SEND, []).extend(delivery_ids)


@event.listens_for(Session, "after_commit")
def _send_after_commit(session: Session) -> None:
    """Send the messages of the deliveries this transaction wrote; a failure leaves them to ``relay``."""
    ids = session.info.pop(_TO_SEND, None)
    if not ids:
        return
    from domain.queue import send_delivery  # the broker's seam imports the domain

    for n, delivery_id in enumerate(ids):
        try:
            send_delivery(delivery_id)
        except Exception as exc:  # SQS is away: the rest too, and the sweeper's relay sends them all
            extra = {"delivery_id": delivery_id, "unsent": len(ids) - n, "error": repr(exc)}
            logger.warning("deliveries not sent; the sweeper will", extra=extra)
            return


@event.listens_for(Session, "after_rollback")
def _forget_after_rollback(session: Session) -> None:
    session.info.pop(_TO_SEND, None)


# Deliveries


def claim(delivery_id: str, lease_seconds: float) -> tuple[WebhookAttempt, int] | None:
    """Take a due ``pending`` delivery for one attempt, leased for ``lease_seconds``; return it and its number, or None.

    The lease is ``next_attempt_at``: a worker that dies during the attempt leaves the delivery
    to the next one to find it due (the message's redelivery, or the sweeper). The number fences
    the result: only the latest attempt may settle the delivery (``holds``).
    """
    now = utcnow()
    stmt = (
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.status == PENDING,
            WebhookDelivery.next_attempt_at <= now,
        )
        .values(attempts=WebhookDelivery.attempts + 1, next_attempt_at=now + timedelta(seconds=lease_seconds))
        .returning(WebhookDelivery.attempts)
    )
    number = db.session.execute(stmt).scalar_one_or_none()
    if number is None:
        return None
    attempt = WebhookAttempt(delivery_id=delivery_id, started_at=now, error=UNFINISHED)
    db.session.add(attempt)
    return attempt, number


def holds(delivery_id: str, number: int) -> WebhookDelivery | None:
    """Return the delivery, locked, while attempt ``number`` is still its latest and it is pending; else None.

    A redelivery while an attempt runs, or a lease that ran out and was taken, makes a later
    attempt: this one's result is then only written on its own attempt's line.
    """
    delivery = db.session.get(WebhookDelivery, delivery_id, with_for_update=True, populate_existing=True)
    if delivery is None or delivery.status != PENDING or delivery.attempts != number:
        return None
    return delivery


def behind(delivery: WebhookDelivery) -> datetime | None:
    """Return when an earlier event of the same video is next tried for the same endpoint, if one waits (order)."""
    earlier = aliased(WebhookDelivery)
    query = select(func.min(earlier.next_attempt_at)).where(
        earlier.endpoint_id == delivery.endpoint_id,
        earlier.video_id == delivery.video_id,
        earlier.status == PENDING,
        earlier.created_at < delivery.created_at,
    )
    found = db.session.scalar(query)
    if found is None:
        return None
    return found if found.tzinfo else found.replace(tzinfo=UTC)  # SQLite's aggregate comes back naive


def backoff(attempts: int, first: float) -> float:
    """Return the wait after ``attempts`` failed attempts: ``first``, doubling, at most an hour."""
    return float(min(BACKOFF_MAX, first * 2 ** max(0, attempts - 1)))


def record_attempt(attempt: WebhookAttempt, status: int | None, error: str | None, seconds: float) -> bool:
    """Write an attempt's result on its line; return whether it acknowledged (a 2xx)."""
    ok = status is not None and 200 <= status < 300
    attempt.status_code, attempt.duration_ms = status, int(seconds * 1000)
    attempt.error = None if ok else (error or f"answered HTTP {status}")[:500]
    return ok


def settle(
    delivery: WebhookDelivery,
    attempt: WebhookAttempt,
    status: int | None,
    error: str | None,
    seconds: float,
    settings: Settings,
) -> float | None:
    """Record an attempt's result; return the seconds until the next attempt, or None when the delivery is over.

    A 2xx acknowledges. Anything else is tried again with backoff until ``WEBHOOK_RETRY_FOR_SECONDS``
    after the event; then the delivery fails, and ``WEBHOOK_DISABLE_AFTER`` failed in a row
    disable the endpoint, with the reason for its owner.
    """
    now = utcnow()
    ok = record_attempt(attempt, status, error, seconds)
    endpoint = delivery.endpoint
    if ok:
        delivery.status, delivery.finished_at, delivery.next_attempt_at = SUCCEEDED, now, None
        endpoint.failed_in_a_row = 0
        return None
    delay = backoff(delivery.attempts, settings.WEBHOOK_RETRY_SECONDS)
    if now + timedelta(seconds=delay) <= delivery.created_at + timedelta(seconds=settings.WEBHOOK_RETRY_FOR_SECONDS):
        delivery.next_attempt_at = now + timedelta(seconds=delay)
        return delay
    fail(delivery, now)
    endpoint.failed_in_a_row = WebhookEndpoint.failed_in_a_row + 1  # in the UPDATE: concurrent failures all count
    db.session.flush()
    db.session.refresh(endpoint, ["failed_in_a_row"])
    if endpoint.failed_in_a_row >= settings.WEBHOOK_DISABLE_AFTER and endpoint.disabled_at is None:
        endpoint.disabled_at = now
        endpoint.disabled_reason = (
            f"{endpoint.failed_in_a_row} deliveries in a row failed for "
            f"{settings.WEBHOOK_RETRY_FOR_SECONDS // 3600} h; the last attempt: {attempt.error}"
        )
        logger.warning("endpoint disabled", extra={"endpoint_id": endpoint.id, "reason": endpoint.disabled_reason})
    return None


def fail(delivery: WebhookDelivery, now: datetime) -> None:
    """End ``delivery`` ``failed``: no more attempts."""
    delivery.status, delivery.finished_at, delivery.next_attempt_at = FAILED, now, None


def own_delivery(endpoint: WebhookEndpoint, delivery_id: str) -> WebhookDelivery:
    """Return the endpoint's delivery, or raise ``NotFound``."""
    canonical = _canonical(delivery_id)
    delivery = db.session.get(WebhookDelivery, canonical) if canonical else None
    if delivery is None or delivery.endpoint_id != endpoint.id:
        raise NotFound("not_found", "No such delivery.")
    return delivery


def deliveries(endpoint: WebhookEndpoint, limit: int, offset: int) -> tuple[list[WebhookDelivery], int]:
    """Return one page of the endpoint's deliveries, newest first, and how many it has."""
    where = WebhookDelivery.endpoint_id == endpoint.id
    total = db.session.scalar(select(func.count()).select_from(WebhookDelivery).where(where)) or 0
    query = select(WebhookDelivery).where(where).order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id)
    return list(db.session.scalars(query.limit(limit).offset(offset))), total


def redeliver(delivery: WebhookDelivery) -> WebhookDelivery:
    """Send ``delivery`` again now, whatever it ended as (the same event id and body); sent once committed."""
    if delivery.endpoint.disabled_at is not None:
        raise Conflict("endpoint_disabled", "The endpoint is disabled; enable it first.")
    if delivery.status == PENDING:  # it is being tried, or waits for its next attempt: one at a time
        raise Conflict("delivery_pending", "The delivery is still being tried; see its next_attempt_at.")
    delivery.status, delivery.finished_at, delivery.next_attempt_at = PENDING, None, utcnow()
    _send_once_committed([delivery.id])
    return delivery


# The sweeper's part


def relay(settings: Settings, limit: int = 1000) -> list[str]:
    """Resend the deliveries due for longer than ``SWEEP_AFTER_SECONDS`` (their message was lost); return their ids.

    Each is taken with a conditional UPDATE of ``next_attempt_at``, so of several sweepers one
    sends it. The caller commits, which sends them.
    """
    now = utcnow()
    overdue = now - timedelta(seconds=settings.SWEEP_AFTER_SECONDS)
    rows = db.session.execute(
        select(WebhookDelivery.id, WebhookDelivery.next_attempt_at)
        .where(WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at < overdue)
        .limit(limit)
    ).all()
    taken = []
    for delivery_id, due in rows:
        stmt = (
            update(WebhookDelivery)
            .where(and_(WebhookDelivery.id == delivery_id, WebhookDelivery.next_attempt_at == due))
            .values(next_attempt_at=now)
        )
        result: CursorResult[Any] = db.session.execute(stmt)  # type: ignore[assignment]
        if result.rowcount == 1:
            taken.append(delivery_id)
    _send_once_committed(taken)
    return taken


def prune(settings: Settings) -> int:
    """Delete events (their deliveries and attempts with them) older than ``WEBHOOK_KEEP_DAYS``; the caller commits."""
    before = utcnow() - timedelta(days=settings.WEBHOOK_KEEP_DAYS)
    old = select(WebhookEvent.id).where(WebhookEvent.created_at < before)
    open_ = select(WebhookDelivery.event_id).where(WebhookDelivery.status == PENDING)
    ids = list(db.session.scalars(old.where(WebhookEvent.id.not_in(open_))))
    if not ids:
        return 0
    attempts = select(WebhookDelivery.id).where(WebhookDelivery.event_id.in_(ids))
    db.session.execute(delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(attempts)))
    db.session.execute(delete(WebhookDelivery).where(WebhookDelivery.event_id.in_(ids)))
    result: CursorResult[Any] = db.session.execute(delete(WebhookEvent).where(WebhookEvent.id.in_(ids)))  # type: ignore[assignment]
    return result.rowcount
