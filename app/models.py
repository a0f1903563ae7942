"""Users and their videos; a video's row is its job's state."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ForeignKey, String, and_, or_, update
from sqlalchemy.orm import Mapped, mapped_column, relationship
from werkzeug.security import check_password_hash, generate_password_hash

from app.extensions import db


def utcnow() -> datetime:
    """Return the current time, timezone-aware UTC."""
    return datetime.now(UTC)


def new_id() -> str:
    """Return a new random identifier."""
    return str(uuid.uuid4())


class Status(enum.StrEnum):
    """Where a video is in its life."""

    UPLOADED = "uploaded"  # in S3 and the database, not yet on the queue
    QUEUED = "queued"
    PROCESSING = "processing"
    PROCESSED = "processed"
    FAILED = "failed"


class User(db.Model):
    """Someone who uploads videos."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(255), unique=True, index=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    first_name: Mapped[str | None] = mapped_column(String(100))
    last_name: Mapped[str | None] = mapped_column(String(100))
    city: Mapped[str | None] = mapped_column(String(100))
    country: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(db.DateTime(timezone=True), default=utcnow)

    videos: Mapped[list[Video]] = relationship(back_populates="owner", cascade="all, delete-orphan")

    def set_password(self, password: str) -> None:
        """Store a salted hash of ``password``."""
        self.password_hash = generate_password_hash(password)

    def check_password(self, password: str) -> bool:
        """Return whether ``password`` matches the stored hash."""
        return check_password_hash(self.password_hash, password)


class Video(db.Model):
    """One upload and the state of its processing."""

    __tablename__ = "videos"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    title: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default=Status.UPLOADED.value, index=True)
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
    created_at: Mapped[datetime] = mapped_column(db.DateTime(timezone=True), default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(db.DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    heartbeat_at: Mapped[datetime | None] = mapped_column(db.DateTime(timezone=True))
    processed_at: Mapped[datetime | None] = mapped_column(db.DateTime(timezone=True))

    owner: Mapped[User] = relationship(back_populates="videos")

    @staticmethod
    def transition(
        video_id: str, sources: tuple[Status, ...], target: Status, claimed_by: str | None = None, **values: Any
    ) -> bool:
        """Move the row from one of ``sources`` to ``target`` if it is still there; commit.

        The conditional UPDATE is what makes two deliveries of one message safe: only
        one of them sees its WHERE clause match. ``claimed_by`` further requires that
        the caller still holds the row.
        """
        stmt = update(Video).where(Video.id == video_id, Video.status.in_([s.value for s in sources]))
        if claimed_by is not None:
            stmt = stmt.where(Video.claimed_by == claimed_by)
        values = {"status": target.value, "updated_at": utcnow(), **values}
        changed = db.session.execute(stmt.values(**values)).rowcount == 1
        db.session.commit()
        return changed

    @staticmethod
    def claim(video_id: str, token: str, previous_token: str | None, stale_after: int) -> bool:
        """Take the row for processing under ``token``; commit; return whether it was taken.

        A row can be taken when it waits (uploaded, queued), when its processing
        heartbeat is older than ``stale_after`` seconds (its worker died), or when
        ``previous_token`` holds it: the earlier try of this same task, now retrying.
        """
        now = utcnow()
        processing = Video.status == Status.PROCESSING.value
        takeable = [
            Video.status.in_([Status.UPLOADED.value, Status.QUEUED.value]),
            and_(processing, Video.heartbeat_at < now - timedelta(seconds=stale_after)),
        ]
        if previous_token:
            takeable.append(and_(processing, Video.claimed_by == previous_token))
        # A retry continues an attempt; a fresh delivery (first, or after a worker died) starts one.
        attempts = Video.attempts if previous_token else Video.attempts + 1
        stmt = (
            update(Video)
            .where(Video.id == video_id, or_(*takeable))
            .values(
                status=Status.PROCESSING.value,
                claimed_by=token,
                progress=0,
                attempts=attempts,
                heartbeat_at=now,
                updated_at=now,
                error_code=None,
                error_message=None,
            )
        )
        changed = db.session.execute(stmt).rowcount == 1
        db.session.commit()
        return changed

    @staticmethod
    def beat(video_id: str, token: str, progress: int | None = None) -> None:
        """Record that the job holding the row is alive, and its progress when given."""
        values: dict[str, Any] = {"heartbeat_at": utcnow()}
        if progress is not None:
            values["progress"] = progress
        stmt = (
            update(Video)
            .where(Video.id == video_id, Video.status == Status.PROCESSING.value, Video.claimed_by == token)
            .values(**values)
        )
        db.session.execute(stmt)
        db.session.commit()

    @staticmethod
    def give_up_if_exhausted(video_id: str, stale_after: int, max_attempts: int) -> bool:
        """Fail a row whose worker died ``max_attempts`` times (a job that kills its worker); commit."""
        stmt = (
            update(Video)
            .where(
                Video.id == video_id,
                Video.status == Status.PROCESSING.value,
                Video.heartbeat_at < utcnow() - timedelta(seconds=stale_after),
                Video.attempts >= max_attempts,
            )
            .values(
                status=Status.FAILED.value,
                error_code="worker_lost",
                error_message=f"The worker processing this video died {max_attempts} times; giving up.",
                heartbeat_at=None,
                updated_at=utcnow(),
            )
        )
        changed = db.session.execute(stmt).rowcount == 1
        db.session.commit()
        return changed
