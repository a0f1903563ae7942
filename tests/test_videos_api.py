"""Upload validation, storage, enqueueing and the video endpoints (moto server, no worker)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from celeryconfig import PROCESS_TASK
from domain import estimates, jobs
from domain import storage as storage_module
from domain.extensions import db, get_settings
from domain.models import IdempotencyKey, Status, User, Video, utcnow
from domain.storage import aws_client, get_storage
from ops.aws import queue_url
from tests.conftest import ROOT, free_port, post_upload, signup_and_login, statements, unique_email, wait_for

upload = post_upload


def stored_keys(app: Flask) -> list[str]:
    with app.app_context():
        return get_storage().keys("")


def row_count(app: Flask) -> int:
    with app.app_context():
        return db.session.query(Video).count()


def queued_task_ids(app: Flask) -> list[str]:
    """Receive every message on the queue and return the task ids kombu put in them."""
    sqs = aws_client("sqs", get_settings(app))
    url = queue_url(get_settings(app), sqs)
    ids = []
    while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
        for message in messages:
            envelope = json.loads(base64.b64decode(message["Body"]))
            ids.append(envelope["headers"]["id"])
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return ids


def test_upload_is_stored_recorded_and_queued(app: Flask, client: FlaskClient, auth: dict, clip: Callable) -> None:
    source = clip("small.mp4")
    response = upload(client, auth, source)
    assert response.status_code == 202
    body = response.json
    assert body["status"] == "queued" and body["message"]
    with app.app_context():
        video = db.session.get(Video, body["video_id"])
        assert video is not None and video.task_id == body["task_id"]
        assert (video.status, video.width, video.height, video.size_bytes) == (
            "queued",
            640,
            480,
            source.stat().st_size,
        )
        assert video.duration == pytest.approx(4, abs=0.1)
        assert video.original_key == f"originals/{video.id}/small.mp4"
    assert stored_keys(app) == [f"originals/{body['video_id']}/small.mp4"]
    assert body["task_id"] in queued_task_ids(app)


def test_status_of_a_fresh_upload(client: FlaskClient, auth: dict, clip: Callable) -> None:
    source = clip("clip.mov")
    video_id = upload(client, auth, source).json["video_id"]
    body = client.get(f"/api/videos/{video_id}", headers=auth).json
    expected = {"id", "title", "status", "progress", "created_at", "processed_at", "original_url"}
    expected |= {"processed_url", "poster_url", "error", "task_id", "queue_position", "seconds_left", "upload_id"}
    expected |= {"av1_url", "optimization"}
    assert expected == set(body)
    assert (body["title"], body["status"], body["progress"], body["error"]) == ("My clip", "queued", 0, None)
    assert (body["queue_position"], body["seconds_left"]) == (1, None)
    assert body["processed_url"] is None and body["processed_at"] is None
    assert body["av1_url"] is None and body["optimization"] is None, "no optimize stage before it is published"
    with urllib.request.urlopen(body["original_url"]) as presigned:  # a real presigned GET against moto
        assert presigned.read() == source.read_bytes()


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [
        ("notes.txt", 415, "not_a_video"),
        ("still.png", 415, "format_not_allowed"),
        ("clip.mkv", 415, "format_not_allowed"),
        ("silent-renamed.mp4", 415, "not_a_video"),
        ("blip.mp4", 422, "duration_out_of_bounds"),
        ("tiny.mp4", 422, "resolution_out_of_bounds"),
    ],
)
def test_rejected_uploads_leave_nothing(
    app: Flask, client: FlaskClient, auth: dict, clip: Callable, tmp_path: Path, name: str, status: int, code: str
) -> None:
    if name == "notes.txt":
        path = tmp_path / name
        path.write_text("definitely not a video\n" * 100)
    elif name == "silent-renamed.mp4":  # the extension lies: bytes of text named .mp4
        path = tmp_path / name
        path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 1000)
    else:
        path = clip(name)
    response = upload(client, auth, path)
    assert response.status_code == status
    assert response.json["error"]["code"] == code and response.json["error"]["message"]
    assert stored_keys(app) == [] and row_count(app) == 0


def test_silent_video_is_accepted(client: FlaskClient, auth: dict, clip: Callable) -> None:
    assert upload(client, auth, clip("silent.mp4")).status_code == 202


@pytest.mark.parametrize(
    ("title", "code"), [(None, "invalid_request"), ("x" * 201, "invalid_request"), ("   ", "invalid_title")]
)
def test_title_is_required(client: FlaskClient, auth: dict, clip: Callable, title: str | None, code: str) -> None:
    response = upload(client, auth, clip("small.mp4"), title=title)
    assert response.status_code == 400 and response.json["error"]["code"] == code
    if code == "invalid_request":  # the schema's answer names the field
        assert list(response.json["error"]["fields"]) == ["title"]


def test_file_is_required(client: FlaskClient, auth: dict) -> None:
    response = upload(client, auth, None)
    assert response.status_code == 400 and response.json["error"]["code"] == "invalid_request"
    assert list(response.json["error"]["fields"]) == ["video_file"]


def test_upload_needs_a_token(client: FlaskClient, clip: Callable) -> None:
    assert upload(client, {}, clip("small.mp4")).status_code == 401


@pytest.mark.parametrize("size", [200_000, 2_000_000])  # caught after spooling; caught by the body limit
def test_over_the_size_limit_is_413(make_app: Callable, app: Flask, tmp_path: Path, size: int) -> None:
    small = make_app({"SQS_QUEUE_NAME": "api-tests", "MAX_UPLOAD_BYTES": "100000"})
    client = small.test_client()
    headers = signup_and_login(client, unique_email())
    path = tmp_path / "big.mp4"
    path.write_bytes(b"\0" * size)
    response = upload(client, headers, path)
    assert response.status_code == 413 and response.json["error"]["code"] == "file_too_large"
    assert stored_keys(app) == [] and row_count(app) == 0


def test_broker_down_keeps_the_upload(make_app: Callable, app: Flask, clip: Callable) -> None:
    broken = make_app(
        {"SQS_QUEUE_NAME": "api-tests"}, CELERY_BROKER_URL=f"sqs://testing:testing@127.0.0.1:{free_port()}"
    )
    client = broken.test_client()
    headers = signup_and_login(client, unique_email())
    response = upload(client, headers, clip("small.mp4"))
    assert response.status_code == 503
    body = response.json
    assert body["error"]["code"] == "queue_unavailable" and body["status"] == "uploaded"
    with app.app_context():
        video = db.session.get(Video, body["video_id"])
        assert video is not None and video.status == Status.UPLOADED
    assert stored_keys(app) == [video.original_key]


def test_a_retried_503_with_its_idempotency_key_makes_one_video(make_app: Callable, app: Flask, clip: Callable) -> None:
    """The 503 of a stored upload is final for its key: the client's retry gets it back, not a second video."""
    broken = make_app(
        {"SQS_QUEUE_NAME": "api-tests"}, CELERY_BROKER_URL=f"sqs://testing:testing@127.0.0.1:{free_port()}"
    )
    client = broken.test_client()
    headers = {**signup_and_login(client, unique_email()), "Idempotency-Key": "stored-while-sqs-was-down"}
    first = upload(client, headers, clip("small.mp4"))
    again = upload(client, headers, clip("small.mp4"))
    assert first.status_code == again.status_code == 503
    assert again.json == first.json and again.headers["Idempotent-Replayed"] == "true"
    assert row_count(app) == 1 and stored_keys(app) == [f"originals/{first.json['video_id']}/small.mp4"]


def test_an_upload_that_died_after_storing_its_video_is_answered_from_it(
    client: FlaskClient, auth: dict, clip: Callable, app: Flask
) -> None:
    """The key is bound to the video in the row's own commit: a request that died before answering makes no second."""
    headers = {**auth, "Idempotency-Key": "died-after-the-commit"}
    first = upload(client, headers, clip("small.mp4"))
    with app.app_context():
        key = db.session.query(IdempotencyKey).filter_by(key="died-after-the-commit").one()
        assert key.video_id == first.json["video_id"]
        # What the row holds when the process died between the video's commit and keeping the answer.
        key.status_code, key.body, key.created_at = None, None, utcnow() - timedelta(hours=2)
        db.session.commit()
    again = upload(client, headers, clip("small.mp4"))
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json["video_id"] == first.json["video_id"] and row_count(app) == 1


def test_an_upload_that_failed_after_storing_its_video_is_replayed_not_repeated(
    client: FlaskClient, auth: dict, clip: Callable, app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.api import videos

    def broken(video: Video) -> bool:
        raise RuntimeError("the process failed after the row's commit")

    monkeypatch.setattr(videos, "queue_stored", broken)
    headers = {**auth, "Idempotency-Key": "failed-after-the-commit"}
    with contextlib.suppress(RuntimeError):  # 500, or raised through the test client
        first = upload(client, headers, clip("small.mp4"))
        assert first.status_code == 500
    monkeypatch.undo()
    again = upload(client, headers, clip("small.mp4"))
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true", again.json
    assert row_count(app) == 1 and again.json["status"] == "uploaded", "stored; the sweeper queues it"


def test_the_answer_tells_a_worker_faster_than_the_upload(
    client: FlaskClient, auth: dict, clip: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker that claims the video between its message and the route's own move to queued.
    from domain import queue

    def send_then_claim(video_id: str, task_id: str) -> None:
        assert jobs.claim(video_id, f"{task_id}:0", None, stale_after=60)

    monkeypatch.setattr(queue, "enqueue_video", send_then_claim)
    response = upload(client, auth, clip("small.mp4"))
    assert response.status_code == 202 and response.json["status"] == "processing", response.json
    with client.application.app_context():
        assert db.session.get(Video, response.json["video_id"]).status == Status.PROCESSING


def add_video(user_id: int, **values: Any) -> Video:
    video = Video(user_id=user_id, title="t", original_key="originals/x/a.mp4", **values)
    db.session.add(video)
    db.session.commit()
    return video


def test_list_is_paginated_and_private(app: Flask, client: FlaskClient, auth: dict) -> None:
    other = signup_and_login(client, unique_email())
    with app.app_context():
        me, them = db.session.query(User).order_by(User.id).all()
        mine = [add_video(me.id).id for _ in range(5)]
        add_video(them.id)
    first = client.get("/api/videos?per_page=2", headers=auth).json
    assert (first["total"], first["pages"], first["page"], len(first["items"])) == (5, 3, 1, 2)
    pages = [client.get(f"/api/videos?per_page=2&page={n}", headers=auth).json["items"] for n in (1, 2, 3)]
    assert sorted(v["id"] for page in pages for v in page) == sorted(mine)
    assert client.get("/api/videos", headers=other).json["total"] == 1
    past = client.get("/api/videos?per_page=2&page=4", headers=auth).json
    assert (past["total"], past["pages"], past["page"], past["items"]) == (5, 3, 4, [])


def test_a_list_without_videos_and_a_deleted_users_list(app: Flask, client: FlaskClient, auth: dict) -> None:
    for page in (1, 2):
        empty = client.get(f"/api/videos?page={page}", headers=auth).json
        assert (empty["total"], empty["pages"], empty["items"]) == (0, 0, [])
    with app.app_context():
        db.session.delete(db.session.query(User).one())
        db.session.commit()
    for page in (1, 2):
        response = client.get(f"/api/videos?page={page}", headers=auth)
        assert response.status_code == 401 and response.json["error"]["code"] == "invalid_token"


def test_someone_elses_video_is_404(app: Flask, client: FlaskClient, auth: dict) -> None:
    other = signup_and_login(client, unique_email())
    with app.app_context():
        owner = db.session.query(User).filter_by(email="player@example.com").one()
        video_id = add_video(owner.id).id
    for method in (client.get, client.delete):
        for path in (f"/api/videos/{video_id}", "/api/videos/not-a-uuid"):
            response = method(path, headers=other)
            assert response.status_code == 404 and response.json["error"]["code"] == "not_found"
    assert client.get(f"/api/videos/{video_id}", headers=auth).status_code == 200


@pytest.mark.commits  # other connections read its rows, or it counts real transactions
def test_a_status_read_is_one_statement(app: Flask, client: FlaskClient, auth: dict) -> None:
    with app.app_context():
        owner = db.session.query(User).one()
        start = utcnow() - timedelta(minutes=1)
        _, waiting = (add_video(owner.id, status="queued", created_at=start + timedelta(seconds=n)).id for n in (0, 1))
        done = add_video(owner.id, status="processed").id
    with statements(client) as sent:
        answers = [client.get(f"/api/videos/{v}", headers=auth).json for v in (waiting, done)]
    assert [(a["id"], a["queue_position"]) for a in answers] == [(waiting, 2), (done, None)]
    assert sent == ["SELECT", "SELECT"], "the token's user, its video and the queue position at once"


def test_a_deleted_users_token_is_401_on_a_status_read(app: Flask, client: FlaskClient, auth: dict) -> None:
    with app.app_context():
        owner = db.session.query(User).one()
        video_id = add_video(owner.id).id
        db.session.execute(Video.__table__.delete())
        db.session.delete(owner)
        db.session.commit()
    for path in (f"/api/videos/{video_id}", "/api/videos/not-a-uuid"):
        response = client.get(path, headers=auth)
        assert response.status_code == 401 and response.json["error"]["code"] == "invalid_token", path


def test_delete_removes_row_and_objects(app: Flask, client: FlaskClient, auth: dict, clip: Callable) -> None:
    video_id = upload(client, auth, clip("small.mp4")).json["video_id"]
    with app.app_context():
        storage = get_storage()
        storage.client.put_object(Bucket=storage.bucket, Key=f"processed/{video_id}/video.mp4", Body=b"v")
        storage.client.put_object(Bucket=storage.bucket, Key="originals/someone-else/a.mp4", Body=b"o")
    assert client.delete(f"/api/videos/{video_id}", headers=auth).status_code == 204
    assert client.get(f"/api/videos/{video_id}", headers=auth).status_code == 404
    assert stored_keys(app) == ["originals/someone-else/a.mp4"] and row_count(app) == 0


def test_unknown_route_is_json(client: FlaskClient) -> None:
    response = client.get("/api/nope")
    assert response.status_code == 404 and response.json["error"]["code"] == "not_found"


def test_health_and_readiness(client: FlaskClient, make_app: Callable) -> None:
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json["checks"] == {"database": "ok", "s3": "ok", "sqs": "ok", "jail": "ok"}
    broken = make_app({"SQS_QUEUE_NAME": "no-such-queue", "S3_BUCKET": "no-such-bucket"}).test_client()
    response = broken.get("/readyz")
    assert response.status_code == 503
    checks = response.json["checks"]
    assert checks["database"] == "ok" and checks["s3"].startswith("error") and checks["sqs"].startswith("error")


def test_owner_retries_a_failed_video(app: Flask, client: FlaskClient, auth: dict) -> None:
    with app.app_context():
        owner = db.session.query(User).one()
        failed = add_video(owner.id, status="failed", attempts=3, error_code="worker_lost", error_message="x")
        queued = add_video(owner.id, status="queued")
        failed_id, old_task, queued_id = failed.id, failed.task_id, queued.id
    response = client.post(f"/api/videos/{failed_id}/retry", headers=auth)
    assert response.status_code == 202
    body = response.json
    assert (body["status"], body["error"]) == ("queued", None) and body["task_id"] != old_task
    assert body["task_id"] in queued_task_ids(app)
    with app.app_context():
        assert db.session.get(Video, failed_id).attempts == 0
    again = client.post(f"/api/videos/{queued_id}/retry", headers=auth)
    assert again.status_code == 409 and again.json["error"]["code"] == "not_failed"
    other = signup_and_login(client, unique_email())
    assert client.post(f"/api/videos/{failed_id}/retry", headers=other).status_code == 404


def test_operator_retry_and_sweep_commands(app: Flask, client: FlaskClient, auth: dict) -> None:
    with app.app_context():
        owner = db.session.query(User).one()
        failed = add_video(owner.id, status="failed", error_code="worker_lost").id
        waiting = add_video(owner.id, status="uploaded").id
        fresh = add_video(owner.id, status="uploaded").id
        db.session.execute(
            Video.__table__.update().where(Video.id == waiting).values(updated_at=utcnow() - timedelta(hours=1))
        )
        db.session.commit()
    runner = app.test_cli_runner()
    assert f"{failed}: queued" in runner.invoke(args=["videos", "retry", failed]).output
    assert "requeued 1" in runner.invoke(args=["videos", "sweep"]).output
    assert "requeued 0" in runner.invoke(args=["videos", "sweep"]).output  # the lease: nothing twice
    with app.app_context():
        statuses = {v: db.session.get(Video, v).status for v in (failed, waiting, fresh)}
    assert statuses == {failed: "queued", waiting: "queued", fresh: "uploaded"}


def test_aws_init_is_idempotent_and_sets_the_redrive_policy(app: Flask) -> None:
    runner = app.test_cli_runner()
    for _ in range(2):
        result = runner.invoke(args=["aws", "init"])
        assert result.exit_code == 0 and "dlq" in result.output
    sqs = aws_client("sqs", get_settings(app))
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url(get_settings(app), sqs), AttributeNames=["All"])[
        "Attributes"
    ]
    policy = json.loads(attributes["RedrivePolicy"])
    assert policy["deadLetterTargetArn"].endswith(":api-tests-dlq") and int(policy["maxReceiveCount"]) == 5
    assert attributes["VisibilityTimeout"] == "120" and attributes["ReceiveMessageWaitTimeSeconds"] == "1"
    s3 = aws_client("s3", get_settings(app))
    rules = s3.get_bucket_lifecycle_configuration(Bucket=app.config["S3_BUCKET"])["Rules"]
    assert rules[0]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}


def test_sweep_requeues_stale_jobs_and_stops_crash_loops(app: Flask) -> None:
    with app.app_context():
        user = User(email=unique_email(), password_hash="x")
        db.session.add(user)
        db.session.commit()
        long_ago = utcnow() - timedelta(hours=1)
        lost = add_video(user.id, status="processing", attempts=1, heartbeat_at=long_ago).id
        looping = add_video(user.id, status="processing", attempts=3, heartbeat_at=long_ago).id
        alive = add_video(user.id, status="processing", attempts=1, heartbeat_at=utcnow()).id
    output = app.test_cli_runner().invoke(args=["videos", "sweep"]).output
    assert "requeued 1, failed 1" in output
    with app.app_context():
        rows = {v: db.session.get(Video, v) for v in (lost, looping, alive)}
        assert (rows[lost].status, rows[lost].heartbeat_at) == ("queued", None)
        assert (rows[looping].status, rows[looping].error_code) == ("failed", "worker_lost")
        assert rows[alive].status == "processing"
    assert rows[lost].task_id in queued_task_ids(app)


def test_retries_wait_in_sqs_not_in_a_worker(app: Flask) -> None:
    task_id = str(uuid.uuid4())
    with app.app_context():  # what Task.retry(..., delay_seconds=n) publishes
        app.extensions["celery"].send_task(PROCESS_TASK, args=["some-video"], task_id=task_id, delay_seconds=3)
    assert task_id not in queued_task_ids(app)  # SQS holds it back (DelaySeconds)
    assert task_id in wait_for(lambda: queued_task_ids(app), timeout=10)


@pytest.mark.commits  # other connections read its rows, or it counts real transactions
def test_concurrent_sweepers_send_one_message_per_video(app: Flask, base_env: dict[str, str]) -> None:
    queued_task_ids(app)  # start from an empty queue
    with app.app_context():
        user = User(email=unique_email(), password_hash="x")
        db.session.add(user)
        db.session.commit()
        ids = [add_video(user.id, status="uploaded").id for _ in range(20)]
        db.session.execute(Video.__table__.update().values(updated_at=utcnow() - timedelta(hours=1)))
        db.session.commit()
    env = {**os.environ, **base_env, "SQS_QUEUE_NAME": "api-tests"}
    argv = [sys.executable, "-m", "flask", "--app", "app", "videos", "sweep"]
    sweepers = [subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=120)[0] for p in sweepers]
    requeued = sum(int(out.split("requeued ")[1].split(",")[0]) for out in outputs)
    sent = queued_task_ids(app)
    with app.app_context():
        rows = [db.session.get(Video, v) for v in ids]
    assert requeued == 20 and len(sent) == 20, outputs
    assert sorted(sent) == sorted(r.task_id for r in rows) and {r.status for r in rows} == {"queued"}


@pytest.mark.commits  # other connections read its rows, or it counts real transactions
def test_queue_position_and_time_left(app: Flask, client: FlaskClient, auth: dict) -> None:
    with app.app_context():
        owner = db.session.query(User).one()
        start = utcnow() - timedelta(minutes=10)
        waiting = [add_video(owner.id, status="queued", created_at=start + timedelta(seconds=n)).id for n in range(3)]
        running = add_video(
            owner.id, status="processing", progress=25, started_at=utcnow() - timedelta(seconds=30), created_at=start
        ).id
    positions = [client.get(f"/api/videos/{v}", headers=auth).json["queue_position"] for v in waiting]
    assert positions == [1, 2, 3], "the processing video is not in the queue"
    with statements(client) as sent:
        listed = client.get("/api/videos", headers=auth).json["items"]
    assert {v["id"]: v["queue_position"] for v in listed} == {
        **dict(zip(waiting, [1, 2, 3], strict=True)),
        running: None,
    }
    assert sent == ["SELECT"], "the user, the page, its count and the positions of all three at once"
    busy = client.get(f"/api/videos/{running}", headers=auth).json
    assert busy["queue_position"] is None and busy["seconds_left"] == pytest.approx(90, abs=3)  # 30 s for 25 %
    with app.app_context():  # what the retry and cancel answers give
        assert [estimates.queue_position(db.session.get(Video, v)) for v in (waiting[1], running)] == [2, None]


def test_cancel_a_waiting_video(app: Flask, client: FlaskClient, auth: dict) -> None:
    with app.app_context():
        owner = db.session.query(User).one()
        waiting = add_video(owner.id, status="queued").id
        done = add_video(owner.id, status="processed").id
    answer = client.post(f"/api/videos/{waiting}/cancel", headers=auth)
    assert answer.status_code == 200 and answer.json["status"] == "cancelled"
    with app.app_context():
        assert not jobs.claim(waiting, "task:0", None, 60), "a cancelled video is never started"
    again = client.post(f"/api/videos/{waiting}/cancel", headers=auth)
    assert again.status_code == 409 and again.json["error"]["code"] == "not_cancellable"
    assert client.post(f"/api/videos/{done}/cancel", headers=auth).status_code == 409
    other = signup_and_login(client, unique_email())
    assert client.post(f"/api/videos/{waiting}/cancel", headers=other).status_code == 404


def test_presigned_urls_are_reused_for_half_their_life(monkeypatch: pytest.MonkeyPatch) -> None:
    signed = []

    class Client:
        def generate_presigned_url(self, op: str, Params: dict, ExpiresIn: int) -> str:
            signed.append(Params["Key"])
            return f"https://s3/{Params['Key']}?n={len(signed)}"

    clock = [1000.0]
    monkeypatch.setattr(storage_module.time, "monotonic", lambda: clock[0])
    store = storage_module.Storage(Client(), "b", url_expires=600)
    first = store.url("k")
    clock[0] += 299
    assert store.url("k") == first and store.url("other") != first and store.url(None) is None
    clock[0] += 2  # past half of the URL's 600 s: a fresh one, never one about to expire
    assert store.url("k") != first and signed == ["k", "other", "k"]
