"""Flower on SQS: it sees the workers and their tasks (events through SNS) and their pools (remote control)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from config import ConfigError
from config.flower import flower_options
from domain.queue import enqueue_video
from tests.conftest import ROOT, Worker, free_port, wait_for
from tests.test_e2e import row, seed_video

pytestmark = pytest.mark.e2e


@pytest.fixture
def flower(base_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """A ``celery -A tasks flower`` process; yields its base URL."""
    port = free_port()
    env = {**os.environ, **base_env, "SQS_QUEUE_NAME": "e2e", "FLOWER_UNAUTHENTICATED_API": "true"}
    argv = [sys.executable, "-m", "celery", "-A", "tasks", "flower", "--address=127.0.0.1", f"--port={port}"]
    with (tmp_path / "flower.log").open("wb") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: get(f"{url}/healthcheck") == "OK", timeout=60)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def get(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
    except OSError:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return body


def test_flower_shows_workers_and_tasks(flower: str, e2e_app: Flask, worker: Worker, clip: Callable) -> None:
    workers = wait_for(lambda: (w := get(f"{flower}/workers?json=1")) and w["data"] and w)  # its queue is subscribed
    online = {w["hostname"]: w for w in workers["data"]}
    assert any(name.startswith("e2e@") for name in online)
    assert all(w["worker-heartbeat"] >= 1 for w in online.values())

    video = seed_video(e2e_app, clip("small.mp4").read_bytes())
    task_id = str(uuid.uuid4())
    with e2e_app.app_context():
        enqueue_video(video.id, task_id)
    wait_for(lambda: (r := row(e2e_app, video.id)) and r.status == "processed", timeout=120)
    info = wait_for(lambda: (t := get(f"{flower}/api/task/info/{task_id}")) and t.get("state") == "SUCCESS" and t)
    assert info["name"] == "tasks.process_video" and info["args"] == repr([video.id])
    assert info["worker"].startswith("e2e@") and info["runtime"] > 0


def test_flower_worker_page_shows_pool_stats_over_remote_control(
    flower: str, worker: Worker, start_worker: Callable[..., Worker], tmp_path: Path
) -> None:
    start_worker("optimize", {"SQS_QUEUE_NAME": "e2e"}, args=("-Q", "e2e-optimize"))

    def inspected(prefix: str = "e2e@") -> dict[str, Any] | None:
        workers = get(f"{flower}/api/workers?refresh=1") or {}
        mine = {name: w for name, w in workers.items() if name.startswith(prefix) and w.get("stats")}
        return mine or None

    [(_, optimizer)] = wait_for(lambda: inspected("optimize@"), timeout=60).items()
    assert [q["name"] for q in optimizer["active_queues"]] == ["e2e-optimize"], "the optimize workers, on their queue"
    workers = wait_for(inspected, timeout=60)
    [(name, info)] = workers.items()
    assert info["stats"]["pool"]["max-concurrency"] == 2 and info["registered"] == [
        "tasks.deliver_webhook",
        "tasks.optimize_video",
        "tasks.process_video",
    ]
    assert info["active_queues"][0]["name"] == "e2e"
    page = get(f"{flower}/worker/{name}")
    assert "Max concurrency" in page and "tasks.process_video" in page, "the pool and registered tabs are filled"
    # What an operator sees: headless Chromium's picture of the page (VIDEOPROC_SCREENSHOTS=docs keeps it).
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("no chromium (make test installs it when root)")
    shot = tmp_path / "flower-worker.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
    flags += ["--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'chromium'}"]
    subprocess.run(
        [chromium, *flags, "--window-size=1280,1400", f"--screenshot={shot}", f"{flower}/worker/{name}"],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.stat().st_size > 20_000, "a rendered page, not a blank one"
    if folder := os.environ.get("VIDEOPROC_SCREENSHOTS"):
        shutil.copy(shot, ROOT / folder / "flower-worker.png")


PRODUCTION = {
    "APP_ENV": "production",
    "SECRET_KEY": "Xq3-vN9_tL0bWc7Rz2pK5mHs8dJf1gYa4eUo6iTn",
    "SQS_QUEUE_NAME": "e2e",
    "TRUSTED_PROXIES": "1",
}


def start_flower(env: dict[str, str], log: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "celery", "-A", "tasks", "flower"]  # address and port from flowerconfig.py
    with log.open("wb") as out:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def status(url: str, auth: str | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def test_production_flower_refuses_to_start_open(base_env: dict[str, str], tmp_path: Path) -> None:
    env = {**os.environ, **base_env, **PRODUCTION, "FLOWER_PORT": str(free_port())}
    proc = start_flower(env, tmp_path / "flower.log")
    assert proc.wait(60) != 0
    assert "FLOWER_BASIC_AUTH" in (tmp_path / "flower.log").read_text()


def test_production_flower_asks_for_a_password(base_env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, **base_env, **PRODUCTION, "FLOWER_PORT": str(port), "FLOWER_ADDRESS": "127.0.0.1"}
    proc = start_flower({**env, "FLOWER_BASIC_AUTH": "ops:a-long-ops-password"}, tmp_path / "flower.log")
    url = f"http://127.0.0.1:{port}/workers"
    try:
        wait_for(lambda: status(url) == 401, timeout=60)
        assert status(url, "ops:wrong") == 401
        assert status(url, "ops:a-long-ops-password") == 200
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({}, "FLOWER_BASIC_AUTH or FLOWER_AUTH"),
        ({"FLOWER_BASIC_AUTH": "ops"}, "user:password"),
        ({"FLOWER_BASIC_AUTH": "ops:pw", "FLOWER_UNAUTHENTICATED_API": "true"}, "UNAUTHENTICATED"),
    ],
)
def test_flower_options_in_production(env: dict[str, str], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        flower_options("production", env)


def test_flower_options() -> None:
    assert flower_options("development", {}) == {"address": "127.0.0.1", "port": 5555}
    opts = flower_options("production", {"FLOWER_BASIC_AUTH": "a:b, c:d", "FLOWER_ADDRESS": "10.0.0.5"})
    assert opts == {"address": "10.0.0.5", "port": 5555, "basic_auth": ["a:b", "c:d"]}
