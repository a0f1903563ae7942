"""Hostile files through the real stack: the upload's probe, a real worker, FFmpeg in its sandbox, moto, the database.

The files are crafted by ``tests/hostile.py``. Where a test says a file is a bomb, it first shows FFmpeg without the
sandbox falling for it, so the test fails if the file stops being one.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from domain.queue import enqueue_video
from tests import hostile
from tests.conftest import ROOT, Worker, post_upload, signup_and_login, unique_email, wait_for
from tests.test_e2e import row, seed_video

pytestmark = pytest.mark.e2e
MiB = 1024**2
PROBE_LIMIT, ENCODE_LIMIT = 512 * MiB, 1536 * MiB
# Runs the sandboxed probe (and, given a second argument, the pipeline) in a fresh process and prints the largest
# resident size any of its FFmpeg children reached: ru_maxrss of RUSAGE_CHILDREN, in KiB on Linux.
MEASURE = """
import json, resource, sys, tempfile
from pathlib import Path
from config import load_settings
from media.pipeline import Pipeline
from media.probe import ProbeError, probe
from media.profile import Profile
from media.runner import FFmpegError
from domain.media import confinement

box = confinement(load_settings({"APP_ENV": "testing", "SECRET_KEY": "x"}))
result = {}
try:
    info = probe(sys.argv[1], box)
    result["probe"] = {"width": info.width, "height": info.height, "fps": info.fps}
    if len(sys.argv) > 2:
        with tempfile.TemporaryDirectory() as tmp:
            Pipeline(Profile(intro_seconds=0, outro_seconds=0), tmp, box).run(Path(sys.argv[1]), info, Path(tmp))
        result["encoded"] = True
except (ProbeError, FFmpegError) as exc:
    result["error"] = exc.reason
result["peak"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps(result))
"""


def measured(path: Path, encode: bool = False) -> dict:
    argv = [sys.executable, "-c", MEASURE, str(path)] + (["encode"] if encode else [])
    return json.loads(subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=True).stdout)


def unsandboxed_peak(argv: list[str]) -> int:
    """Peak resident bytes of ``argv`` run with no limits."""
    code = "import resource, subprocess, sys; subprocess.run(sys.argv[1:], capture_output=True); "
    code += "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)"
    return int(subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True).stdout)


@pytest.fixture(scope="module")
def crafted(tmp_path_factory: pytest.TempPathFactory, clip: Callable[[str], Path]) -> Callable[[str], Path]:
    """Return a crafted file by name, made on first use."""
    folder = tmp_path_factory.mktemp("hostile")
    real = clip("small.mp4")
    makers: dict[str, Callable[[Path], Path]] = {
        "index-bomb.mp4": hostile.index_bomb,
        "frame-bomb.mp4": hostile.frame_bomb,
        "switch.mp4": hostile.resolution_switch,
        "hls-existing.mp4": lambda p: hostile.hls_playlist(p, real),
        "hls-missing.mp4": lambda p: hostile.hls_playlist(p, folder / "no-such-file.mp4"),
        "concat.mp4": lambda p: hostile.concat_playlist(p, real),
        "data.mp4": lambda p: hostile.data_playlist(p, real),
    }

    def get(name: str) -> Path:
        path = folder / name
        if not path.exists():
            makers[name](path)
        return path

    return get


@pytest.fixture
def uploader(e2e_app: Flask) -> tuple[FlaskClient, dict[str, str]]:
    client = e2e_app.test_client()
    return client, signup_and_login(client, unique_email())


def test_index_bomb_is_refused_at_upload_within_the_probe_limit(
    crafted: Callable[[str], Path], uploader: tuple[FlaskClient, dict]
) -> None:
    bomb = crafted("index-bomb.mp4")
    assert bomb.stat().st_size < 100_000
    open_peak = unsandboxed_peak(["ffprobe", "-v", "error", "-show_format", "-show_streams", str(bomb)])
    assert open_peak > 1024 * MiB, "without the sandbox, ffprobe builds a gigabyte-sized index"
    result = measured(bomb)
    assert result["peak"] < PROBE_LIMIT, "under its address-space limit, ffprobe gives up on the index"
    client, headers = uploader
    response = post_upload(client, headers, bomb)
    # What is left of the file declares 85 million frames over 33 days, and no decodable picture.
    assert response.status_code in (415, 422)
    assert response.json["error"]["code"] in ("not_a_video", "duration_out_of_bounds", "too_many_frames")


def test_frame_bomb_is_refused_at_upload(crafted: Callable[[str], Path], uploader: tuple[FlaskClient, dict]) -> None:
    bomb = crafted("frame-bomb.mp4")
    declared = measured(bomb)["probe"]
    assert declared["fps"] >= 100_000 and (declared["width"], declared["height"]) == (7680, 4320)
    client, headers = uploader
    response = post_upload(client, headers, bomb)
    assert response.status_code == 422
    assert response.json["error"]["code"] in ("frame_rate_out_of_bounds", "too_many_frames", "pixel_rate_out_of_bounds")


def test_resolution_switch_fails_the_job_within_a_minute(
    crafted: Callable[[str], Path], e2e_app: Flask, worker: Worker, uploader: tuple[FlaskClient, dict]
) -> None:
    switch = crafted("switch.mp4")
    result = measured(switch, encode=True)
    assert result["probe"]["width"] == 640, "the header says 640x480"
    assert result["error"] == "resolution" and result["peak"] < ENCODE_LIMIT
    client, headers = uploader
    accepted = post_upload(client, headers, switch)
    assert accepted.status_code == 202, accepted.json
    video_id = accepted.json["video_id"]
    failed = wait_for(lambda: (r := row(e2e_app, video_id)) and r.status == "failed" and r, timeout=60)
    assert failed.error_code == "resolution_out_of_bounds" and "ffmpeg" not in failed.error_message.lower()
    retry = client.post(f"/api/videos/{video_id}/retry", headers=headers)
    assert (retry.status_code, retry.json["error"]["code"]) == (409, "not_retryable")


def test_playlists_naming_local_files_answer_alike(
    crafted: Callable[[str], Path], uploader: tuple[FlaskClient, dict]
) -> None:
    client, headers = uploader
    answers = [post_upload(client, headers, crafted(name)) for name in ("hls-existing.mp4", "hls-missing.mp4")]
    existing, missing = ((a.status_code, a.json) for a in answers)
    assert existing == missing, "the answer must not tell whether a server file exists"
    assert answers[0].status_code == 415 and answers[0].json["error"]["code"] == "format_not_allowed"
    for name in ("concat.mp4", "data.mp4"):
        response = post_upload(client, headers, crafted(name))
        assert (response.status_code, response.json["error"]["code"]) == (415, "format_not_allowed"), name


@pytest.fixture
def listener() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP port that records whatever connects to it."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    seen: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                seen.append(conn.recv(1024) or b"(connected)")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], seen
    stop.set()
    thread.join()
    server.close()


def test_a_playlist_never_reaches_the_network(
    tmp_path: Path, uploader: tuple[FlaskClient, dict], listener: tuple[int, list[bytes]]
) -> None:
    port, seen = listener
    playlist = hostile.http_playlist(tmp_path / "remote.mp4", f"http://127.0.0.1:{port}/segment.ts")
    # FFmpeg's hls demuxer only allows http for local playlists when told to; told so, it connects (the listener works).
    subprocess.run(["ffprobe", "-v", "quiet", "-protocol_whitelist", "file,http,tcp", str(playlist)], timeout=30)
    assert wait_for(lambda: seen, timeout=10)
    seen.clear()
    client, headers = uploader
    response = post_upload(client, headers, playlist)
    assert (response.status_code, response.json["error"]["code"]) == (415, "format_not_allowed")
    # The probe has exited; a sentinel connection queues behind any connection it made.
    with socket.create_connection(("127.0.0.1", port)) as sentinel:
        sentinel.sendall(b"sentinel")
        assert wait_for(lambda: seen, timeout=10)
    assert seen == [b"sentinel"]


def test_mov_external_references_are_never_followed(tmp_path: Path) -> None:
    fifo = tmp_path / "target.fifo"
    os.mkfifo(fifo)
    mov = hostile.mov_external_reference(tmp_path / "dref.mov", fifo)

    def opens_target(argv: list[str]) -> bool:
        """Run ``argv``; return whether it opened the FIFO (a writer can then open it without blocking)."""
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                    return True
                except OSError:
                    time.sleep(0.05)
            return False
        finally:
            proc.kill()
            proc.wait()

    assert opens_target(["ffprobe", "-v", "error", "-enable_drefs", "1", "-show_streams", str(mov)])
    sandboxed = [sys.executable, "-c", MEASURE, str(mov)]
    assert not opens_target(sandboxed)


def test_seeded_index_bomb_fails_in_the_worker_too(
    crafted: Callable[[str], Path], e2e_app: Flask, worker: Worker
) -> None:
    """An original that reaches S3 without the upload's checks (as direct uploads will) is refused by the worker."""
    video = seed_video(e2e_app, crafted("index-bomb.mp4").read_bytes())
    with e2e_app.app_context():
        enqueue_video(video.id, video.task_id)
    failed = wait_for(lambda: (r := row(e2e_app, video.id)) and r.status == "failed" and r, timeout=60)
    assert failed.error_code in ("not_a_video", "duration_out_of_bounds", "too_many_frames")
    assert failed.attempts == 1
