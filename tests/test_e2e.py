"""What a user runs: the Flask app, moto server, a real `celery -A tasks worker`, FFmpeg and the database."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from domain.extensions import db
from domain.models import User, Video
from domain.queue import enqueue_video
from domain.storage import get_storage
from tests.clips import ffprobe, moov_before_mdat
from tests.conftest import Worker, post_upload, queue_empty, signup_and_login, unique_email, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def e2e_client(e2e_app: Flask, worker: Worker) -> FlaskClient:
    return e2e_app.test_client()


def upload(client: FlaskClient, headers: dict[str, str], path: Path) -> dict[str, Any]:
    response = post_upload(client, headers, path, title=path.stem)
    assert response.status_code == 202, response.json
    return response.json


def poll_until_done(client: FlaskClient, headers: dict[str, str], video_id: str) -> tuple[dict, list[int]]:
    """Poll like a client would; return the final body and every progress value seen while processing."""
    seen: list[int] = []

    def finished() -> dict | None:
        body = client.get(f"/api/videos/{video_id}", headers=headers).json
        if body["status"] == "processing":
            seen.append(body["progress"])
        return body if body["status"] in ("processed", "failed") else None

    return wait_for(finished, timeout=240, interval=0.1), seen


def download(url: str, path: Path) -> Path:
    import urllib.request

    with urllib.request.urlopen(url) as response:
        path.write_bytes(response.read())
    return path


@pytest.mark.parametrize(("name", "content_seconds"), [("portrait.mp4", 30), ("small.mp4", 4)])
def test_upload_is_processed(
    e2e_app: Flask,
    e2e_client: FlaskClient,
    worker: Worker,
    clip: Callable,
    tmp_path: Path,
    name: str,
    content_seconds: float,
) -> None:
    headers = signup_and_login(e2e_client, unique_email())
    accepted = upload(e2e_client, headers, clip(name))
    body, progress = poll_until_done(e2e_client, headers, accepted["video_id"])

    assert body["status"] == "processed" and body["progress"] == 100 and body["error"] is None
    assert body["processed_at"] >= body["created_at"]
    assert progress == sorted(progress), "progress never goes back"
    video = download(body["processed_url"], tmp_path / "video.mp4")
    data = ffprobe(video)
    assert [s["codec_type"] for s in data["streams"]] == ["video"]
    stream = data["streams"][0]
    assert (stream["width"], stream["height"], stream["sample_aspect_ratio"]) == (1280, 720, "1:1")
    assert float(data["format"]["duration"]) == pytest.approx(2 + content_seconds + 2, abs=0.15)
    assert moov_before_mdat(video)
    poster = ffprobe(download(body["poster_url"], tmp_path / "poster.jpg"))["streams"][0]
    assert (poster["width"], poster["height"]) == (1280, 720)

    video_id = accepted["video_id"]
    with e2e_app.app_context():
        row = db.session.get(Video, video_id)
        assert row is not None
        assert (row.status, row.attempts, row.task_id) == ("processed", 1, accepted["task_id"])
        assert row.processed_key == f"processed/{video_id}/video.mp4"
        keys = get_storage().keys("")
    assert sorted(k for k in keys if video_id in k) == [
        f"originals/{video_id}/{name}",
        f"processed/{video_id}/poster.jpg",
        f"processed/{video_id}/video.mp4",
    ]
    # The log says where the job's time went, and how many jobs shared the host's cores (this one at least).
    (line,) = wait_for(lambda: worker.lines("msg=processed", video_id), timeout=5)
    steps = dict(re.findall(r"\b(download|encode|upload)_seconds=([\d.]+)", line))
    assert sorted(steps) == ["download", "encode", "upload"] and float(steps["encode"]) > 0
    assert int(re.findall(r"\bsharing=(\d+)", line)[0]) >= 1
    # FFmpeg read the original through the relay: all of a short clip, never more than there is.
    fetched, size = int(re.findall(r"\bfetched_bytes=(\d+)", line)[0]), clip(name).stat().st_size
    assert fetched == size if content_seconds < 30 else 0 < fetched <= size


def test_portrait_upload_reports_progress(e2e_client: FlaskClient, clip: Callable) -> None:
    headers = signup_and_login(e2e_client, unique_email())
    accepted = upload(e2e_client, headers, clip("portrait.mp4"))
    _, progress = poll_until_done(e2e_client, headers, accepted["video_id"])
    assert any(10 <= p < 100 for p in progress), f"no intermediate progress seen: {progress}"


def seed_video(app: Flask, content: bytes) -> Video:
    """Put an original straight into S3 and the database, as if the upload checks had passed."""
    with app.app_context():
        user = User(email=unique_email(), password_hash="x")
        video_id = str(uuid.uuid4())
        video = Video(id=video_id, owner=user, title="seeded", original_key=f"originals/{video_id}/seeded.mp4")
        storage = get_storage()
        storage.client.put_object(Bucket=storage.bucket, Key=video.original_key, Body=content)
        db.session.add(video)
        db.session.commit()
        db.session.refresh(video)
        db.session.expunge(video)
        return video


def row(app: Flask, video_id: str) -> Video | None:
    with app.app_context():
        found = db.session.get(Video, video_id)
        if found is not None:
            db.session.expunge(found)
        return found


def test_undecodable_original_fails_once_with_a_reason(e2e_app: Flask, worker: Worker) -> None:
    video = seed_video(e2e_app, b"\x00\x00\x00\x18ftypisom" + b"\xde\xad\xbe\xef" * 5000)
    with e2e_app.app_context():
        enqueue_video(video.id, video.task_id)
    failed = wait_for(lambda: (r := row(e2e_app, video.id)) and r.status == "failed" and r, timeout=120)
    # The worker applies the upload's rules, with the upload's codes; FFmpeg's words stay in the log.
    assert failed.error_code == "not_a_video" and failed.error_message == "The file is not a readable video."
    assert failed.attempts == 1
    wait_for(lambda: queue_empty(e2e_app), timeout=60)  # acknowledged, nothing left to redeliver
    assert row(e2e_app, video.id).attempts == 1
    with e2e_app.app_context():
        assert get_storage().keys(f"processed/{video.id}/") == []


def test_deliveries_with_nothing_to_do_are_acknowledged(e2e_app: Flask, worker: Worker, clip: Callable) -> None:
    video = seed_video(e2e_app, clip("small.mp4").read_bytes())
    with e2e_app.app_context():
        enqueue_video(video.id, video.task_id)
    done = wait_for(lambda: (r := row(e2e_app, video.id)) and r.status == "processed" and r, timeout=120)

    missing = str(uuid.uuid4())
    with e2e_app.app_context():
        enqueue_video(video.id, str(uuid.uuid4()))  # a second delivery for a processed video
        enqueue_video(missing, str(uuid.uuid4()))  # a video deleted before its message arrived

    def skipped() -> list[str]:
        return [line for line in worker.log.read_text().splitlines() if "nothing to do" in line]

    wait_for(lambda: sum(vid in line for line in skipped() for vid in (video.id, missing)) >= 2)
    again = row(e2e_app, video.id)
    assert (again.status, again.attempts, again.processed_at) == ("processed", 1, done.processed_at)
    assert any(f"video_id={missing}" in line and "reason=deleted" in line for line in skipped())
    assert any(f"video_id={video.id}" in line and "reason=processed" in line for line in skipped())
