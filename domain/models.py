"""Users and their videos; a video's row is its job's state."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime

from sqlalchemy import DateTime, Dialect, ForeignKey, Index, String, TypeDecorator, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship
from werkzeug.security import check_password_hash, generate_password_hash

from domain.extensions import Model, db, get_settings


def utcnow() -> datetime:
    """Return the current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is timezone-aware UTC on every database: SQLite keeps no zone, so its values come back UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.astimezone(UTC) if value is not None and value.tzinfo else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def new_id() -> str:
    """Return a new random identifier."""
    return str(uuid.uuid4())


class Status(enum.StrEnum):
    """Where a video is in its life; domain/jobs.py owns every change."""

    UPLOADING = "uploading"  # a direct upload: the client is sending its parts to S3
    COMPLETING = "completing"  # its complete is joining the parts: an abort now loses (Conflict)
    UPLOADED = "uploaded"  # in S3 and the database, not yet on the queue
    QUEUED = "queued"
    PROCESSING = "processing"
    RETRYING = "retrying"  # a passing fault: SQS holds the retry's message until retry_at
    PROCESSED = "processed"
    FAILED = "failed"
    CANCELLED = "cancelled"  # by its owner (or an operator's revoke): never started, or stopped


class User(Model):
    """Someone who uploads videos."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(255), unique=True, index=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    first_name: Mapped[str | None] = mapped_column(String(100))
    last_name: Mapped[str | None] = mapped_column(String(100))
    city: Mapped[str | None] = mapped_column(String(100))
    country: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    videos: Mapped[list[Video]] = relationship(back_populates="owner", cascade="all, delete-orphan")

    def set_password(self, password: str) -> None:
        """Store a salted hash of ``password``, by today's ``PASSWORD_HASH`` (scrypt at OWASP's parameters)."""
        self.password_hash = generate_password_hash(password, method=get_settings().PASSWORD_HASH)

    def check_password(self, password: str) -> bool:
        """Return whether ``password`` matches the stored hash."""
        return check_password_hash(self.password_hash, password)

    def needs_rehash(self) -> bool:
        """Return whether the stored hash was made otherwise than ``PASSWORD_HASH`` says today."""
        return not self.password_hash.startswith(get_settings().PASSWORD_HASH + "$")


class Video(Model):
    """One upload and the state of its processing."""

    __tablename__ = "videos"
    # The queue position counts the waiting videos uploaded earlier (domain/estimates.py): from
    # this index alone, not the rows. Its leading column serves the lookups by status.
    __table_args__ = (Index("ix_videos_status_created_at", "status", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    title: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default=Status.UPLOADED.value)
    progress: Mapped[int] = mapped_column(default=0)
    task_id: Mapped[str] = mapped_column(String(36), default=new_id)
    attempts: Mapped[int] = mapped_column(default=0)
    # Retries asked for by the owner (POST /retry), limited by VIDEO_MAX_RETRIES.
    retries: Mapped[int] = mapped_column(default=0, server_default="0")
    # "<task_id>:<retries>" of the delivery that holds the row while it is processing.
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    original_filename: Mapped[str | None] = mapped_column(String(255))
    original_key: Mapped[str] = mapped_column(String(512))
    processed_key: Mapped[str | None] = mapped_column(String(512))
    poster_key: Mapped[str | None] = mapped_column(String(512))
    size_bytes: Mapped[int | None] = mapped_column(db.BigInteger)
    duration: Mapped[float | None]
    width: Mapped[int | None]
    height: Mapped[int | None]
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(db.Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # this attempt's claim
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # A direct upload while it is ``uploading``: its public id, S3's multipart upload, its parts, its deadline.
    upload_id: Mapped[str | None] = mapped_column(String(36), unique=True, index=True)
    s3_upload_id: Mapped[str | None] = mapped_column(String(1024))
    part_size: Mapped[int | None] = mapped_column(db.BigInteger)
    upload_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The optimize stage, once processed (domain/optimize.py): its state, its holder, its renditions.
    optimize_status: Mapped[str | None] = mapped_column(String(16), index=True)
    optimize_claimed_by: Mapped[str | None] = mapped_column(String(64))
    optimize_heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    optimize_attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    optimize_progress: Mapped[int] = mapped_column(default=0, server_default="0")
    optimize_error: Mapped[str | None] = mapped_column(db.Text)
    optimized_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    av1_key: Mapped[str | None] = mapped_column(String(512))
    renditions: Mapped[str | None] = mapped_column(db.Text)  # JSON: each rendition's codec, preset, CRF, SSIM, bytes

    owner: Mapped[User] = relationship(back_populates="videos")


class Usage(Model):
    """One upload's bytes against its owner's daily limits (domain/quotas.py).

    Kept when the video is aborted, expires or is deleted: what was sent was sent. An aborted
    upload's entry is lowered to the bytes S3 had received.
    """

    __tablename__ = "upload_usage"
    __table_args__ = (Index("ix_upload_usage_user_id_created_at", "user_id", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    video_id: Mapped[str] = mapped_column(String(36), index=True)
    bytes: Mapped[int] = mapped_column(db.BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class IdempotencyKey(Model):
    """A client's ``Idempotency-Key`` and the answer its first request got (app/idempotency.py)."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("user_id", "key", name="uq_idempotency_keys_user_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None]  # None while the first request runs
    # The video the first request created, committed with it: a request that died before answering is answered from it.
    video_id: Mapped[str | None] = mapped_column(String(36))
    body: Mapped[str | None] = mapped_column(db.Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class WebhookEndpoint(Model):
    """A URL of a user's that is told of its videos' final states (domain/webhooks.py)."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[str] = mapped_column(String(255))  # event types, comma-separated
    secret: Mapped[str] = mapped_column(String(64))
    # After a rotation the old secret signs beside the new one until then.
    previous_secret: Mapped[str | None] = mapped_column(String(64))
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    failed_in_a_row: Mapped[int] = mapped_column(default=0)  # deliveries failed for good since the last success
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    disabled_reason: Mapped[str | None] = mapped_column(db.Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class WebhookEvent(Model):
    """A video's final state, written in the transaction that made it (an outbox); its body is what is sent."""

    __tablename__ = "webhook_events"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    video_id: Mapped[str] = mapped_column(String(36))
    type: Mapped[str] = mapped_column(String(32))
    body: Mapped[str] = mapped_column(db.Text)  # the JSON sent, the same bytes on every attempt
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class WebhookDelivery(Model):
    """One event to one endpoint: ``pending`` until a 2xx (``succeeded``) or until retries end (``failed``)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_endpoint_id_created_at", "endpoint_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(ForeignKey("webhook_events.id", ondelete="CASCADE"), index=True)
    video_id: Mapped[str] = mapped_column(String(36))  # the event's: deliveries of one video go in order
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    # When it may be tried (pending); while an attempt runs, when that attempt's lease ends.
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)  # the event's
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    event: Mapped[WebhookEvent] = relationship()
    endpoint: Mapped[WebhookEndpoint] = relationship()
    tries: Mapped[list[WebhookAttempt]] = relationship(
        order_by="WebhookAttempt.id", cascade="all, delete-orphan", passive_deletes=True
    )


class WebhookAttempt(Model):
    """One POST of a delivery: the answer's status, how long it took, or what went wrong."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    status_code: Mapped[int | None]
    duration_ms: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(String(500))
