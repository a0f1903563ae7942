"""Flower on SQS: it sees the workers and their tasks (events fan out through SNS)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from app.queue import enqueue_video
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
