"""The sweeper reconciles rows with SQS and S3; complete and abort of a direct upload exclude each other."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from domain import direct, jobs
from domain.extensions import db, get_settings
from domain.models import Status, User, Video, utcnow
from domain.queue import enqueue_video
from domain.storage import aws_client, get_storage
from ops import dlq
from ops.aws import dlq_url, queue_url
from ops.sweeper import sweep
from tests.conftest import queue_empty, wait_for
from tests.test_direct_uploads import complete, put_parts, start
from tests.test_reliability import Stack, stack  # noqa: F401  (a fixture)

pytestmark = pytest.mark.e2e
# The grace periods at 0: everything the test leaves is old enough to reconcile.
NOW = {"SWEEP_AFTER_SECONDS": "0", "ORPHAN_AFTER_SECONDS": "0"}


def queued_row(s: Stack, **values: Any) -> str:
    """Insert a ``queued`` video of the stack's user, untouched for a minute; return its id."""
    with s.app.app_context():
        user = db.session.query(User).order_by(User.id.desc()).first()
        assert user is not None
        video = Video(user_id=user.id, title="t", original_key="originals/x/a.mp4", status="queued", **values)
        video.updated_at = utcnow() - timedelta(minutes=1)
        db.session.add(video)
        db.session.commit()
        return video.id


def messages(s: Stack, url_of: Callable[..., str]) -> list[dict[str, Any]]:
    with s.app.app_context():
        settings = get_settings(s.app)
        sqs = aws_client("sqs", settings)
        url = url_of(settings, sqs)
        return sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])


def test_a_dead_lettered_messages_row_fails_retryably(stack: Callable[..., Stack]) -> None:  # noqa: F811
    s = stack(NOW)
    video_id = queued_row(s)
    with s.app.app_context():
        enqueue_video(video_id, s.row(video_id).task_id)
        settings = get_settings(s.app)
        sqs = aws_client("sqs", settings)
        # What SQS does after SQS_MAX_RECEIVE_COUNT receives: the message moves to the dead-letter queue.
        [message] = messages(s, queue_url)
        sqs.send_message(QueueUrl=dlq_url(settings, sqs), MessageBody=message["Body"])
        sqs.delete_message(QueueUrl=queue_url(settings, sqs), ReceiptHandle=message["ReceiptHandle"])
        report = sweep(settings)
    assert report.dead_lettered == [video_id] and report.requeued == []
    row = s.row(video_id)
    assert (row.status, row.error_code) == ("failed", "dead_lettered")
    retried = s.client.post(f"/api/videos/{video_id}/retry", headers=s.headers)
    assert retried.status_code == 202 and retried.json["status"] == "queued", retried.json
    with s.app.app_context():  # the retry waits in the queue past the grace: the old dead letter is not its own
        db.session.query(Video).filter_by(id=video_id).update({"updated_at": utcnow() - timedelta(minutes=1)})
        db.session.commit()
        assert sweep(get_settings(s.app)).dead_lettered == []
    assert s.row(video_id).status == "queued"
    assert len(messages(s, dlq_url)) == 1, "the dead letter stays for the operator (flask aws dlq-list)"


def test_a_queued_row_whose_message_vanished_is_requeued(stack: Callable[..., Stack]) -> None:  # noqa: F811
    s = stack(NOW)
    video_id = queued_row(s)
    task_id = s.row(video_id).task_id
    assert queue_empty(s.app), "its message is gone (deleted by hand, or lost)"
    with s.app.app_context():
        report = sweep(get_settings(s.app))
    assert report.requeued == [video_id]
    row = s.row(video_id)
    assert row.status == "queued" and row.task_id != task_id
    [message] = messages(s, queue_url)
    assert dlq.describe(message["Body"])["video_id"] == video_id


def test_objects_and_multipart_uploads_with_no_row_are_removed(stack: Callable[..., Stack], clip: Callable) -> None:  # noqa: F811
    s = stack(NOW)
    kept = s.upload(clip("small.mp4")).json["video_id"]
    orphan = str(uuid.uuid4())
    with s.app.app_context():
        storage = get_storage()
        for key in (f"originals/{orphan}/a.mp4", f"processed/{orphan}/video.mp4"):
            storage.client.put_object(Bucket=storage.bucket, Key=key, Body=b"left behind")
        lost_upload = storage.start_multipart(f"originals/{uuid.uuid4()}/b.mp4", "video/mp4")
        report = sweep(get_settings(s.app))
        assert report.orphans == [orphan]
        assert storage.keys(f"originals/{orphan}/") == storage.keys(f"processed/{orphan}/") == []
        assert storage.keys(f"originals/{kept}/") == [f"originals/{kept}/small.mp4"], "a row's original stays"
        assert lost_upload not in {u["UploadId"] for u in storage.multipart_uploads("originals/")}


def race(s: Stack, path: Path) -> tuple[int, int]:
    """Start and send a direct upload, then complete and abort it at once; return both answers' status."""
    plan = start(s.client, s.headers, path).json
    etags = put_parts(plan, path)
    results: dict[str, int] = {}
    go = threading.Barrier(2)

    def call(name: str) -> None:
        client = s.app.test_client()
        go.wait()
        if name == "complete":
            results[name] = complete(client, s.headers, plan, etags).status_code
        else:
            results[name] = client.delete(f"/api/uploads/{plan['upload_id']}", headers=s.headers).status_code

    threads = [threading.Thread(target=call, args=(name,)) for name in ("complete", "abort")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results["complete"], results["abort"]


def test_complete_and_abort_exclude_each_other(stack: Callable[..., Stack], clip: Callable) -> None:  # noqa: F811
    """20 races of complete against DELETE: one wins, the other loses (409, or 404 once the row is gone)."""
    s = stack({**NOW, "USER_MAX_ACTIVE_VIDEOS": "100", "USER_MAX_UPLOADS_PER_DAY": "1000"})
    answers = [race(s, clip("small.mp4")) for _ in range(20)]
    print(f"\ncomplete/abort races: {sorted(set(answers))}")
    assert set(answers) <= {(202, 409), (409, 204), (404, 204)}, answers
    with s.app.app_context():
        storage = get_storage()
        rows = {v.id: v for v in db.session.query(Video)}
        objects = {key.split("/")[1] for key in storage.keys("originals/")}
        assert objects <= set(rows), "no original without its row"
        stored = {v.id for v in rows.values() if v.status in (Status.UPLOADED, Status.QUEUED)}
        assert stored <= objects, "no row without its original"
        assert storage.multipart_uploads("originals/") == [], "no multipart upload left"
        assert len(stored) == sum(1 for answer in answers if answer == (202, 409))


def test_a_complete_that_died_is_reopened_and_can_finish(stack: Callable[..., Stack], clip: Callable) -> None:  # noqa: F811
    s = stack(NOW)
    path = clip("small.mp4")
    plan = start(s.client, s.headers, path).json
    etags = put_parts(plan, path)
    with s.app.app_context():
        assert jobs.begin_complete(plan["video_id"])
        video = db.session.get(Video, plan["video_id"])
        assert video is not None and video.s3_upload_id
        # Its process died after S3 joined the parts, before the row moved on; the upload's deadline passed since.
        get_storage().complete_multipart(video.original_key, video.s3_upload_id, sorted(etags.items()))
        video.updated_at = video.upload_expires_at = utcnow() - timedelta(hours=2)
        db.session.commit()
        assert s.client.delete(f"/api/uploads/{plan['upload_id']}", headers=s.headers).status_code == 409
        report = sweep(get_settings(s.app))
    assert report.expired == [] and report.orphans == [], "reopened with a new deadline, not expired"
    row = s.row(plan["video_id"])
    assert row.status == "uploading" and row.upload_expires_at > utcnow()
    assert complete(s.client, s.headers, plan, etags).status_code == 202, "the joined object is taken as it is"
    wait_for(lambda: s.row(plan["video_id"]).status == "queued", timeout=10)


def test_a_bucket_that_is_mostly_orphans_is_left_alone(stack: Callable[..., Stack]) -> None:  # noqa: F811
    """Most objects without a row means the wrong database, not a few failures: nothing is deleted."""
    s = stack(NOW)
    with s.app.app_context():
        storage = get_storage()
        for _ in range(25):
            storage.client.put_object(Bucket=storage.bucket, Key=f"originals/{uuid.uuid4()}/a.mp4", Body=b"x")
        assert sweep(get_settings(s.app)).orphans == []
        assert len(storage.keys("originals/")) == 25


def test_a_complete_that_s3_failed_is_reopened_even_under_an_idempotency_key(
    stack: Callable[..., Stack],  # noqa: F811
    clip: Callable,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The 503 is not kept for the key (a retry may succeed), but the reopen the request made is committed."""
    s = stack(NOW)
    path = clip("small.mp4")
    plan = start(s.client, s.headers, path).json
    etags = put_parts(plan, path)

    def unreachable(video: Video, parts: list[dict[str, Any]]) -> None:
        raise direct._storage_unavailable(ConnectionError("S3 is away"))

    monkeypatch.setattr(direct, "_join", unreachable)
    keyed = {**s.headers, "Idempotency-Key": "complete-1"}
    assert complete(s.client, keyed, plan, etags).status_code == 503
    assert s.row(plan["video_id"]).status == "uploading", "given back to the client, not stuck completing"
    monkeypatch.undo()
    assert complete(s.client, keyed, plan, etags).status_code == 202


def test_a_published_videos_outputs_its_row_no_longer_names_are_removed(stack: Callable[..., Stack]) -> None:  # noqa: F811
    """An optimize attempt that died after its upload, and a fast file whose delete failed: swept; named ones kept."""
    s = stack(NOW)
    video_id = queued_row(s)
    named = {f"processed/{video_id}/{name}" for name in ("h264-a-0.mp4", "av1-a-0.mp4", "poster.jpg")}
    stale = {f"processed/{video_id}/{name}" for name in ("h264-b-0.mp4", "av1-b-0.mp4", "video.mp4")}
    with s.app.app_context():
        storage = get_storage()
        for key in named | stale:
            storage.client.put_object(Bucket=storage.bucket, Key=key, Body=b"x")
        keys = sorted(named)
        values = {"processed_key": keys[1], "av1_key": keys[0], "poster_key": keys[2], "optimized_at": utcnow()}
        db.session.execute(db.update(Video).where(Video.id == video_id).values(status="processed", **values))
        db.session.commit()
        assert sweep(get_settings(s.app)).stale_outputs == [], "URLs handed out before the move may name them"
        expired = utcnow() - timedelta(seconds=get_settings(s.app).PRESIGNED_URL_EXPIRES + 1)
        db.session.execute(db.update(Video).where(Video.id == video_id).values(optimized_at=expired))
        db.session.commit()
        assert sorted(sweep(get_settings(s.app)).stale_outputs) == sorted(stale)
        assert set(storage.keys(f"processed/{video_id}/")) == named
        db.session.execute(db.update(Video).where(Video.id == video_id).values(status="processing"))
        db.session.commit()
        storage.client.put_object(Bucket=storage.bucket, Key=f"processed/{video_id}/video.mp4", Body=b"x")
        assert sweep(get_settings(s.app)).stale_outputs == [], "a video being processed again writes first"


def test_an_optimize_stage_whose_message_was_not_sent_or_was_lost_is_sent_again(
    stack: Callable[..., Stack],  # noqa: F811
) -> None:
    s = stack(NOW)
    long_ago = utcnow() - timedelta(hours=2)
    unsent = queued_row(s, optimize_status="pending", optimize_heartbeat_at=long_ago)
    lost = queued_row(s, optimize_status="optimizing", optimize_heartbeat_at=long_ago, optimize_attempts=1)
    running = queued_row(s, optimize_status="optimizing", optimize_heartbeat_at=utcnow(), optimize_attempts=1)
    with s.app.app_context():
        db.session.execute(db.update(Video).values(status="processed", processed_key="processed/x/video.mp4"))
        db.session.commit()
        report = sweep(get_settings(s.app))
        assert sorted(report.optimize_sent) == sorted([unsent, lost])
        db.session.expire_all()
        assert {v.id: v.optimize_status for v in db.session.scalars(db.select(Video))} == {
            unsent: "queued",
            lost: "queued",
            running: "optimizing",
        }
        settings = get_settings(s.app)
        sqs = aws_client("sqs", settings)
        url = sqs.get_queue_url(QueueName=settings.SQS_QUEUE_PREFIX + settings.OPTIMIZE_QUEUE_NAME)["QueueUrl"]
        sent = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
        envelopes = [json.loads(base64.b64decode(m["Body"]))["headers"] for m in sent]
        assert {e["task"] for e in envelopes} == {"tasks.optimize_video"}
        assert sorted(e["argsrepr"] for e in envelopes) == sorted(repr([v]) for v in (unsent, lost))
        assert sweep(get_settings(s.app)).optimize_sent == [], "sent once: the stage is queued now"
