"""The optimize stage: published fast, then smaller at the same quality in one move; the published file untouched."""

from __future__ import annotations

import os
import signal
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from domain import optimize
from domain.extensions import db, get_settings
from domain.models import Video
from domain.storage import get_storage
from media.quality import MAX_PROBES, Made, choose_crf, mean_ssim, worth
from ops import reconcile
from ops.aws import ensure_queues
from tests.clips import ffprobe
from tests.conftest import Worker, post_upload, signup_and_login, unique_email, wait_for
from tests.test_jobs import row, user, video  # noqa: F401  (user: a fixture)

# A small frame keeps the AV1 encodes of the suite short; the stage is the same at any size.
OPT_ENV = {"OUTPUT_WIDTH": "640", "OUTPUT_HEIGHT": "360", "OPTIMIZE_PROBE_SECONDS": "1"}


def _falling(start: float, per_crf: float) -> Callable[[int], float]:
    return lambda crf: start - per_crf * crf


def test_the_crf_is_the_highest_that_reaches_the_target_within_a_few_probes() -> None:
    measured: list[int] = []

    def ssim(crf: int) -> float:
        measured.append(crf)
        return _falling(1.0, 0.002)(crf)

    choice = choose_crf(ssim, target=1.0 - 0.002 * 27.4, low=22, high=34, guess=25, step=3)
    assert choice.crf == 27 and choice.ssim >= choice.target
    assert choice.probes == len(measured) <= MAX_PROBES
    up = choose_crf(_falling(1.0, 0.001), target=0.9, low=20, high=60, guess=46, step=6)
    assert up.crf <= 60 and up.ssim >= 0.9 and up.probes <= MAX_PROBES
    # Not even the lowest CRF measured reaches it: the lowest is kept, and its SSIM says so.
    missed = choose_crf(_falling(0.9, 0.001), target=0.99, low=22, high=34, guess=25, step=3)
    assert missed.ssim < missed.target and missed.crf == 22


def test_a_rendition_serves_only_at_the_published_quality_and_smaller(tmp_path: Path) -> None:
    from tasks.optimize import OptimizeJob

    made = {"ssim": 0.950, "target_ssim": 0.951, "bytes": 900}
    assert worth(made) and worth(made, 1000), "within 0.002 of its target, and smaller"
    assert not worth(made, 900), "not smaller than the published file"
    assert not worth({**made, "ssim": 0.9489}), "more than 0.002 below its target"
    record = {"ssim": 0.96, "target_ssim": 0.95, "published": True}
    files = {"h264": tmp_path / "h.mp4", "av1": tmp_path / "a.mp4"}
    both = Made(files, {"h264": {**record, "bytes": 1000}, "av1": {**record, "bytes": 400}}, 1.0)
    assert OptimizeJob._worth(both, 1000) == {"av1": tmp_path / "a.mp4"}, "the H.264 one is not smaller"
    assert (both.record["h264"]["published"], both.record["av1"]["published"]) == (False, True)


def test_mean_ssim_reads_the_filters_per_frame_lines(tmp_path: Path) -> None:
    stats = tmp_path / "s.log"
    stats.write_text("n:1 Y:0.99 U:0.98 V:0.97 All:0.980000 (17.0)\nn:2 Y:0.95 U:0.94 V:0.93 All:0.940000 (12.2)\n")
    assert mean_ssim(stats) == pytest.approx(0.96)


def _published(user_id: int, **values: Any) -> str:
    values = {"optimize_status": optimize.QUEUED, "processed_key": "processed/v/video.mp4", **values}
    return video(user_id, status="processed", **values)


def test_the_stages_moves_never_touch_the_published_video(user: int) -> None:  # noqa: F811
    """Each move requires ``processed``; only ``done`` changes the published key, and only the one it replaces."""
    video_id = _published(user)
    assert optimize.claim(video_id, "t:0", None, 60) and not optimize.claim(video_id, "u:0", None, 60), "one holder"
    assert optimize.beat(video_id, "t:0", 40) and not optimize.beat(video_id, "u:0", 50)
    assert row(video_id).optimize_progress == 40 and row(video_id).optimize_attempts == 1
    # A retry after a passing fault continues the attempt; a lost worker's retry starts one.
    assert optimize.claim(video_id, "t:1", "t:0", 60, continues="t:0") and row(video_id).optimize_attempts == 1
    # That retry's own redelivery (its worker lost, the stage stale) is an attempt: only the asking try continues.
    assert optimize.claim(video_id, "t:1", "t:0", 0, continues="t:0") and row(video_id).optimize_attempts == 2
    assert optimize.claim(video_id, "t:2", "t:1", 60) and row(video_id).optimize_attempts == 3
    # Released by a stopping worker: waiting again, and touched, so the sweeper resends it only if no retry comes.
    assert optimize.release(video_id, "t:2") and not optimize.release(video_id, "t:2")
    released = row(video_id)
    assert (released.optimize_status, released.optimize_claimed_by) == (optimize.PENDING, None)
    assert released.optimize_heartbeat_at is not None and video_id not in optimize.candidates(optimize.PENDING, 60)
    assert optimize.claim(video_id, "t:2", None, 60) and row(video_id).optimize_attempts == 4
    renditions = {"renditions": {}, "window_cpu_seconds": 1.0}
    assert not optimize.done(video_id, "t:2", "processed/v/other.mp4", "h", "a", renditions), "not what it replaces"
    assert not optimize.done(video_id, "t:1", "processed/v/video.mp4", "h", "a", renditions), "not the holder"
    assert optimize.done(video_id, "t:2", "processed/v/video.mp4", "processed/v/h.mp4", "processed/v/a.mp4", renditions)
    done = row(video_id)
    assert (done.status, done.processed_key, done.av1_key) == ("processed", "processed/v/h.mp4", "processed/v/a.mp4")
    assert done.optimized_at is not None and done.optimize_claimed_by is None
    assert not optimize.cancel(video_id), "an optimized stage can't be cancelled"
    failed = _published(user, optimize_status=optimize.OPTIMIZING, optimize_claimed_by="f:0")
    assert optimize.fail(failed, "f:0", "FFmpeg could not")
    assert (row(failed).status, row(failed).processed_key, row(failed).optimize_error) == (
        "processed",
        "processed/v/video.mp4",
        "FFmpeg could not",
    )
    elsewhere = video(user, status="processing", optimize_status=optimize.QUEUED)
    assert not optimize.claim(elsewhere, "x:0", None, 60) and not optimize.cancel(elsewhere), "only published videos"
    db.session.commit()


class _Deletes:
    """A storage that records what is deleted."""

    def __init__(self) -> None:
        self.deleted: list[str] = []

    def delete(self, key: str) -> None:
        self.deleted.append(key)


def test_a_run_removes_only_what_the_row_does_not_name(user: int) -> None:  # noqa: F811
    """``done`` committed though its answer was lost: the files it published stay, the rest go."""
    from tasks.optimize import OptimizeJob

    h264, av1 = "processed/v/h264-t-0-a1.mp4", "processed/v/av1-t-0-a1.mp4"
    video_id = _published(user, processed_key=h264, optimize_status=optimize.OPTIMIZED)
    job, storage = OptimizeJob(video_id, "t:0", None), _Deletes()
    job.written = [h264, av1]
    with pytest.raises(ConnectionError), job.cleanup(storage):  # type: ignore[arg-type]
        raise ConnectionError("the answer to COMMIT was lost")
    assert storage.deleted == [av1], "the published H.264 file stays"
    assert job.attempt.startswith("t:0-") and job.attempt != OptimizeJob(video_id, "t:0", None).attempt
    gone = OptimizeJob("no-such-video", "t:0", None)
    gone.written = [h264]
    with gone.cleanup(storage):  # type: ignore[arg-type]
        pass
    assert storage.deleted == [av1, h264], "a deleted video's row names nothing"


@pytest.fixture
def stage(
    make_app: Callable[..., Flask], app: Flask, start_worker: Callable[..., Worker]
) -> Callable[..., tuple[Flask, Worker]]:
    """Return a function that starts an app, its video worker and its optimize worker on a queue of its own.

    ``app`` migrates the database.
    """

    def start(queue: str, **env: str) -> tuple[Flask, Worker]:
        full = {"SQS_QUEUE_NAME": queue, **OPT_ENV, **env}
        flask_app = make_app(full)
        with flask_app.app_context():
            ensure_queues(get_settings(flask_app))
        start_worker(f"{queue}-videos", full, concurrency=1)
        optimizer = start_worker(f"{queue}-optimize", full, concurrency=1, args=("-Q", f"{queue}-optimize"))
        return flask_app, optimizer

    return start


def _row(flask_app: Flask, video_id: str) -> Video | None:
    with flask_app.app_context():
        db.session.expire_all()
        video = db.session.get(Video, video_id)
        if video is not None:
            db.session.expunge(video)
        return video


def _swept(flask_app: Flask) -> list[str]:
    """Run the sweeper's removal of the outputs no row names, as it runs once every URL to them has expired."""
    with flask_app.app_context():
        settings = get_settings(flask_app).replace(PRESIGNED_URL_EXPIRES=0, ORPHAN_AFTER_SECONDS=0)
        removed = reconcile.stale_renditions(get_storage(), settings)
        db.session.commit()
        return removed


def _keys(flask_app: Flask, video_id: str) -> set[str]:
    with flask_app.app_context():
        return {key.rsplit("/", 1)[1] for key in get_storage().keys(f"processed/{video_id}/")}


def _download(url: str, path: Path) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=30) as answer:
        path.write_bytes(answer.read())
    return ffprobe(path)


def _video_stream(probed: dict[str, Any]) -> dict[str, Any]:
    return next(s for s in probed["streams"] if s["codec_type"] == "video")


@pytest.mark.e2e
def test_a_video_is_published_fast_then_optimized_at_its_quality_in_one_move(
    stage: Callable[..., tuple[Flask, Worker]], clip: Callable[[str], Path], tmp_path: Path
) -> None:
    flask_app, optimizer = stage("opt")
    client = flask_app.test_client()
    headers = signup_and_login(client, unique_email())
    video_id = post_upload(client, headers, clip("small.mp4")).json["video_id"]

    def published() -> dict[str, Any] | None:
        body = client.get(f"/api/videos/{video_id}", headers=headers).json
        return body if body["status"] == "processed" else None

    fast = wait_for(published, timeout=180, what="published")
    assert fast["optimization"]["status"] in ("pending", "queued", "optimizing", "optimized")
    fast_probe = _download(fast["processed_url"], tmp_path / "fast.mp4")
    fast_bytes = (tmp_path / "fast.mp4").stat().st_size

    def optimized() -> dict[str, Any] | None:
        body = client.get(f"/api/videos/{video_id}", headers=headers).json
        return body if body["optimization"]["status"] == "optimized" else None

    done = wait_for(optimized, timeout=300, what="optimized")
    opt = done["optimization"]
    assert opt["optimized_at"] and opt["progress"] == 100 and opt["error"] is None
    assert done["status"] == "processed" and done["processed_at"] == fast["processed_at"]
    h264 = _download(done["processed_url"], tmp_path / "h264.mp4")
    av1 = _download(done["av1_url"], tmp_path / "av1.mp4")
    assert _video_stream(h264)["codec_name"] == "h264" and _video_stream(av1)["codec_name"] == "av1"
    for probed in (h264, av1):
        stream = _video_stream(probed)
        assert (stream["width"], stream["height"]) == (640, 360)
        assert float(probed["format"]["duration"]) == pytest.approx(float(fast_probe["format"]["duration"]), abs=0.1)
        assert [s["codec_type"] for s in probed["streams"]] == [s["codec_type"] for s in fast_probe["streams"]]
    renditions = opt["renditions"]
    assert set(renditions) == {"h264", "av1"} and all(made["published"] for made in renditions.values())
    assert renditions["h264"]["preset"] == "slow" and renditions["av1"]["preset"] == "8"
    for name, made in renditions.items():
        assert made["bytes"] == (tmp_path / f"{name}.mp4").stat().st_size
        assert made["ssim"] >= made["target_ssim"] or made["crf"] <= 22, "quality matched on the probe window"
        assert 1 <= made["probes"] <= MAX_PROBES and made["cpu_seconds"] > 0 and made["probe_cpu_seconds"] > 0
    assert opt["cpu_seconds"] > sum(r["cpu_seconds"] + r["probe_cpu_seconds"] for r in renditions.values())
    assert renditions["av1"]["bytes"] < fast_bytes, "AV1 at the same SSIM is smaller"
    # One move: the renditions and the poster are what the row names. The fast file stays for the
    # players that loaded it, until the URLs handed out before the move expire; then the sweeper removes it.
    with flask_app.app_context():
        row = db.session.get(Video, video_id)
        assert row is not None and row.optimize_status == optimize.OPTIMIZED
        assert row.processed_key.endswith(".mp4") and row.processed_key != f"processed/{video_id}/video.mp4"
        names = {row.processed_key.rsplit("/", 1)[1], row.av1_key.rsplit("/", 1)[1], "poster.jpg"}
    assert _keys(flask_app, video_id) == names | {"video.mp4"}, "the fast file kept for a while, nothing else"
    assert f"processed/{video_id}/video.mp4" in _swept(flask_app)
    assert _keys(flask_app, video_id) == names, "the fast file removed once no URL can name it"
    assert optimizer.lines("optimized", video_id), "the optimize worker did it"


def _optimizing(flask_app: Flask, video_id: str) -> Video | None:
    video = _row(flask_app, video_id)
    return video if video is not None and video.optimize_status == optimize.OPTIMIZING else None


@pytest.mark.e2e
def test_a_cancel_or_delete_during_optimization_leaves_the_published_video_or_nothing(
    stage: Callable[..., tuple[Flask, Worker]], clip: Callable[[str], Path]
) -> None:
    flask_app, optimizer = stage("opt-stop")
    client = flask_app.test_client()
    headers = signup_and_login(client, unique_email())
    kept, gone = (post_upload(client, headers, clip("small.mp4")).json["video_id"] for _ in range(2))

    wait_for(lambda: _optimizing(flask_app, kept), timeout=180, what="the first optimizing")
    answer = client.post(f"/api/videos/{kept}/cancel", headers=headers)
    assert answer.status_code == 200 and answer.json["status"] == "processed"
    assert answer.json["optimization"]["status"] == "cancelled" and answer.json["processed_url"]
    assert client.post(f"/api/videos/{kept}/cancel", headers=headers).status_code == 409
    wait_for(lambda: optimizer.lines("optimize stopped", kept), timeout=60, what="the first stopped")
    assert _keys(flask_app, kept) == {"video.mp4", "poster.jpg"}, "only the published files"
    row = _row(flask_app, kept)
    assert row is not None and row.processed_key == f"processed/{kept}/video.mp4" and row.av1_key is None

    wait_for(lambda: _optimizing(flask_app, gone), timeout=180, what="the second optimizing")
    assert client.delete(f"/api/videos/{gone}", headers=headers).status_code == 204
    # Stopped by its heartbeat, or (deleted while it uploaded) refused by the move: either way it removes its files.
    ended = ("optimize stopped", "renditions not published", "renditions removed")
    wait_for(lambda: any(optimizer.lines(end, gone) for end in ended), timeout=60, what="the second stopped")
    assert _keys(flask_app, gone) == set(), "nothing of a deleted video"
    assert not list(Path(get_settings(flask_app).WORKER_TMP_DIR).glob(f"*{gone}*")), "no scratch left"


@pytest.mark.e2e
def test_a_worker_killed_during_optimization_is_retried_without_touching_the_published_file(
    stage: Callable[..., tuple[Flask, Worker]], start_worker: Callable[..., Worker], clip: Callable[[str], Path]
) -> None:
    env = {"SQS_VISIBILITY_TIMEOUT": "6", "STALE_AFTER_SECONDS": "3", "HEARTBEAT_SECONDS": "1"}
    flask_app, optimizer = stage("opt-kill", **env)
    client = flask_app.test_client()
    headers = signup_and_login(client, unique_email())
    video_id = post_upload(client, headers, clip("small.mp4")).json["video_id"]
    held = wait_for(lambda: _optimizing(flask_app, video_id), timeout=180, what="optimizing")
    published = held.processed_key
    os.killpg(optimizer.proc.pid, signal.SIGKILL)
    optimizer.proc.wait()
    row = _row(flask_app, video_id)
    assert row is not None and row.processed_key == published and row.status == "processed"
    assert _keys(flask_app, video_id) >= {"video.mp4", "poster.jpg"}, "the published files stay"

    again = start_worker(
        "opt-kill-again", {"SQS_QUEUE_NAME": "opt-kill", **OPT_ENV, **env}, args=("-Q", "opt-kill-optimize")
    )

    def optimized() -> Video | None:
        video = _row(flask_app, video_id)
        return video if video is not None and video.optimize_status == optimize.OPTIMIZED else None

    row = wait_for(optimized, timeout=300, what="optimized by the second worker")
    assert row.optimize_attempts == 2 and row.optimize_claimed_by is None
    wait_for(lambda: again.lines("optimized", video_id), timeout=30, what="logged once the fast file is deleted")
    names = {row.processed_key.rsplit("/", 1)[1], row.av1_key.rsplit("/", 1)[1], "poster.jpg"}
    assert _keys(flask_app, video_id) == names | {"video.mp4"}, "killed while encoding: it had written nothing to S3"
