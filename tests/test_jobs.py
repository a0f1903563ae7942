"""The job's state machine (domain/jobs.py): guards, and the sweeper raced against a redelivery and a retry.

The races are real interleavings: the sweeper reads its candidates, then, before its
UPDATE, another actor moves the row (a redelivery's claim, a retry's claim). The sweeper's
UPDATE must then change nothing. Against PostgreSQL in CI.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask

from domain import jobs
from domain.extensions import db, get_settings
from domain.models import Status, User, Video, utcnow
from ops import sweeper

STALE = 60


@pytest.fixture
def user(app: Flask, ctx: None) -> Iterator[int]:
    owner = User(email="jobs@example.com", password_hash="x")
    db.session.add(owner)
    db.session.commit()
    yield owner.id


def video(user_id: int, **values: Any) -> str:
    row = Video(user_id=user_id, title="t", original_key="originals/x/a.mp4", **values)
    db.session.add(row)
    db.session.commit()
    return row.id


def row(video_id: str) -> Video:
    db.session.expire_all()
    found = db.session.get(Video, video_id)
    assert found is not None
    return found


def held(user_id: int, token: str, beat_age: float = 0, **values: Any) -> str:
    """A row ``processing`` under ``token`` whose last heartbeat was ``beat_age`` seconds ago."""
    return video(
        user_id, status="processing", claimed_by=token, attempts=1, heartbeat_at=utcnow() - timedelta(seconds=beat_age)
    )


def settings(app: Flask) -> dict[str, Any]:
    return get_settings(app).replace(STALE_AFTER_SECONDS=STALE, SWEEP_AFTER_SECONDS=30, MAX_ATTEMPTS=3)


def test_every_transition_names_real_statuses() -> None:
    moves = {
        name: (sorted(s.value for s in sources), target.value) for name, (sources, target) in jobs.TRANSITIONS.items()
    }
    assert moves["claim"] == (["processing", "queued", "retrying", "uploaded"], "processing")
    assert moves["reset"] == (["processing", "retrying"], "uploaded")
    assert all(target != Status.PROCESSED or sources == ["processing"] for sources, target in moves.values())


def test_only_the_holder_moves_its_row(user: int) -> None:
    video_id = held(user, "task:0")
    assert not jobs.beat(video_id, "other:0", 50) and row(video_id).progress == 0
    assert not jobs.finish(video_id, "other:0", "k", "p")
    assert not jobs.fail(video_id, "other:0", "x", "y")
    assert not jobs.release(video_id, "other:0")
    assert not jobs.wait_retry(video_id, "other:0", 10)
    assert row(video_id).status == "processing"
    assert jobs.beat(video_id, "task:0", 50) and row(video_id).progress == 50
    assert jobs.finish(video_id, "task:0", "k", "p")
    done = row(video_id)
    assert (done.status, done.progress, done.processed_key, done.heartbeat_at) == ("processed", 100, "k", None)
    assert not jobs.claim(video_id, "late:0", None, STALE), "a processed video is never claimed again"


def test_a_live_holder_keeps_its_row_and_a_dead_one_loses_it(user: int) -> None:
    live = held(user, "task:0", beat_age=5)
    assert not jobs.claim(live, "dup:0", None, STALE), "a duplicate delivery of another task: the holder lives"
    assert not jobs.claim(live, "task:1", "task:0", STALE, takeover=False), "a recheck waits for staleness"
    assert jobs.claim(live, "task:1", "task:0", STALE), "the main process's retry after losing the pool process"
    assert (row(live).claimed_by, row(live).attempts) == ("task:1", 2)

    dead = held(user, "task:0", beat_age=STALE + 1)
    assert jobs.claim(dead, "redelivered:0", None, STALE)
    assert (row(dead).claimed_by, row(dead).attempts) == ("redelivered:0", 2)


def test_a_crash_loop_ends_failed(user: int) -> None:
    video_id = held(user, "task:2", beat_age=1)
    db.session.execute(Video.__table__.update().where(Video.id == video_id).values(attempts=3))
    db.session.commit()
    assert not jobs.give_up(video_id, STALE, 3), "its holder may be alive: the heartbeat is fresh"
    assert jobs.give_up(video_id, STALE, 3, dead="task:2"), "its pool process was lost: known dead"
    assert (row(video_id).status, row(video_id).error_code) == ("failed", "worker_lost")


def test_a_retry_continues_its_attempt(user: int) -> None:
    video_id = held(user, "task:0")
    assert jobs.wait_retry(video_id, "task:0", delay=300)
    waiting = row(video_id)
    assert waiting.status == "retrying" and waiting.heartbeat_at is None
    assert (
        waiting.retry_at is not None and waiting.retry_at.timestamp() > (utcnow() + timedelta(seconds=290)).timestamp()
    )
    assert not jobs.claim(video_id, "other:1", "other:0", STALE), "only this task's retry takes it"
    assert jobs.claim(video_id, "task:1", "task:0", STALE)
    assert (row(video_id).status, row(video_id).attempts, row(video_id).retry_at) == ("processing", 1, None)


def _backdate(video_id: str, **ages: float) -> None:
    values = {column: utcnow() - timedelta(seconds=age) for column, age in ages.items()}
    db.session.execute(Video.__table__.update().where(Video.id == video_id).values(**values))
    db.session.commit()


def test_the_sweeper_leaves_a_row_waiting_for_its_retry(app: Flask, user: int) -> None:
    video_id = held(user, "task:0")
    jobs.wait_retry(video_id, "task:0", delay=300)
    _backdate(video_id, updated_at=3600)  # waiting long: the backoff, not a lost job
    task_id = row(video_id).task_id
    report = sweeper.sweep(settings(app))
    assert report.requeued == [] and (row(video_id).status, row(video_id).task_id) == ("retrying", task_id)
    assert row(video_id).attempts == 1, "no fresh attempt counted"

    _backdate(video_id, retry_at=STALE + 1)  # the retry's message never came: overdue, lost
    assert sweeper.sweep(settings(app)).requeued == [video_id]
    assert row(video_id).status == "queued" and row(video_id).task_id != task_id


@pytest.fixture
def between_read_and_update(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[str], None]], None]:
    """Run an action on each row after the sweeper has read it as lost and before it changes it."""

    def install(action: Callable[[str], None]) -> None:
        real = jobs.give_up

        def give_up_after(video_id: str, *args: Any, **kwargs: Any) -> bool:
            action(video_id)
            return real(video_id, *args, **kwargs)

        monkeypatch.setattr(sweeper.jobs, "give_up", give_up_after)

    return install


def test_a_redelivery_that_claims_first_beats_the_sweeper(app: Flask, user: int, between_read_and_update: Any) -> None:
    video_id = held(user, "task:0", beat_age=STALE + 5)  # its worker died
    task_id = row(video_id).task_id
    between_read_and_update(lambda v: jobs.claim(v, "task:0-redelivered", None, STALE))
    report = sweeper.sweep(settings(app))
    after = row(video_id)
    assert report.requeued == [] and report.failed == []
    assert (after.status, after.claimed_by, after.task_id) == ("processing", "task:0-redelivered", task_id)
    assert after.attempts == 2, "one new attempt: the redelivery's, not the sweeper's as well"


def test_a_retry_that_claims_first_beats_the_sweeper(app: Flask, user: int, between_read_and_update: Any) -> None:
    video_id = held(user, "task:0")
    jobs.wait_retry(video_id, "task:0", delay=1)
    _backdate(video_id, retry_at=STALE + 5, updated_at=STALE + 5)  # looks lost to the sweeper's read
    task_id = row(video_id).task_id
    between_read_and_update(lambda v: jobs.claim(v, "task:1", "task:0", STALE))
    report = sweeper.sweep(settings(app))
    after = row(video_id)
    assert report.requeued == []
    assert (after.status, after.claimed_by, after.task_id, after.attempts) == ("processing", "task:1", task_id, 1)
