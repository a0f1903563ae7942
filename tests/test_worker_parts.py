"""The worker's pieces that need no broker: the visibility keeper and scratch clean-up."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from flask import Flask

from config import load_settings
from media import runner
from media.probe import ProbeError
from media.sandbox import Resources
from tasks import process
from tasks.errors import is_transient
from tasks.scratch import PREFIX, alive, job_dir, remove_orphans, running_jobs
from tasks.visibility import MessageKeeper
from tests.conftest import wait_for

SETTINGS = load_settings({"SECRET_KEY": "x", "SQS_QUEUE_URL": "https://sqs.example/1/work"})


class FakeSQS:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail = fail

    def change_message_visibility(self, **kwargs: Any) -> None:
        self.calls.append(kwargs)
        if self.fail:
            raise ConnectionError("SQS is away")


def request(task_id: str, handle: str, queue: str | None = None) -> Any:
    info = {"sqs_queue": queue} if queue else {}
    return SimpleNamespace(id=task_id, message=SimpleNamespace(delivery_tag=handle, delivery_info=info))


def test_extends_every_held_message_by_a_full_timeout() -> None:
    sqs = FakeSQS()
    keeper = MessageKeeper(SETTINGS, sqs)
    assert keeper.extend([request("t1", "h1", "https://sqs.example/1/other"), request("t2", "h2")]) == 2
    assert sqs.calls == [
        {"QueueUrl": "https://sqs.example/1/other", "ReceiptHandle": "h1", "VisibilityTimeout": 120},
        {"QueueUrl": "https://sqs.example/1/work", "ReceiptHandle": "h2", "VisibilityTimeout": 120},
    ]


def test_released_messages_are_no_longer_extended() -> None:
    sqs = FakeSQS()
    keeper = MessageKeeper(SETTINGS, sqs)
    keeper.release(request("t1", "h1"))
    assert keeper.extend([request("t1", "h1")]) == 0
    assert sqs.calls == [{"QueueUrl": "https://sqs.example/1/work", "ReceiptHandle": "h1", "VisibilityTimeout": 0}]


def test_a_failed_extension_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    keeper = MessageKeeper(SETTINGS, FakeSQS(fail=True))
    with caplog.at_level(logging.WARNING, logger="tasks.visibility"):
        assert keeper.extend([request("t1", "h1")]) == 0
    assert [r.getMessage() for r in caplog.records] == ["visibility change failed"]
    assert caplog.records[0].task_id == "t1"


def test_orphan_scratch_directories_are_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = tmp_path / f"{PREFIX}{dead.pid}-video-abc"
    mine = tmp_path / f"{PREFIX}{os.getpid()}-video-def"
    other = tmp_path / "unrelated"
    for folder in (orphan, mine, other):
        folder.mkdir()
        (folder / "original").write_bytes(b"x")
    assert not alive(dead.pid) and alive(os.getpid())
    assert running_jobs(str(tmp_path)) == 1  # only the living count: FFmpeg's threads follow them
    assert remove_orphans(str(tmp_path)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, other.name])
    with job_dir("video-ghi", str(tmp_path)):  # this same process: still one job's owner
        assert running_jobs(str(tmp_path)) == 1


def test_a_slow_heartbeat_never_stops_the_next_jobs_ffmpeg(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """A beat stuck in the database past its job's end finds the row lost: it stops that job's children only."""
    gate = threading.Event()

    def slow_holds(video_id: str, token: str) -> bool:
        gate.wait(30)  # the database answers late; by then the row is no longer this job's
        return False

    monkeypatch.setattr(process.jobs, "holds", slow_holds)
    monkeypatch.setattr(process.jobs, "beat", lambda *args, **kwargs: True)
    monkeypatch.setattr(process.Heartbeat, "JOIN_SECONDS", 0.1)
    with process.Heartbeat(app, "video-1", "job-1", every=0.05):
        time.sleep(0.2)  # the beat is inside holds()
    failures: list[runner.FFmpegError] = []

    def next_job() -> None:
        with runner.owned("job-2"):
            try:
                runner.run([sys.executable, "-c", "import time; time.sleep(30)"], limits=Resources(wall_seconds=20))
            except runner.FFmpegError as exc:
                failures.append(exc)

    thread = threading.Thread(target=next_job)
    thread.start()
    wait_for(lambda: list(runner._running.values()) == ["job-2"], timeout=10, interval=0.01)
    gate.set()  # the late beat returns "lost" and stops job-1's children: none
    time.sleep(0.5)
    assert list(runner._running.values()) == ["job-2"] and failures == [], "the next job's FFmpeg runs on"
    assert runner.stop("job-2") == 1
    thread.join(timeout=10)
    assert failures[0].reason == "stopped"


@pytest.mark.parametrize(
    ("reason", "suspect", "retried"),
    [
        ("killed", None, True),  # the OOM killer, an operator: always the host's
        ("killed", "killed", True),
        ("stopped", None, True),
        ("timeout", None, True),  # suspect: once more, in a fresh process
        ("timeout", "timeout", False),  # the same on the second try: the file's
        ("crashed", None, True),
        ("crashed", "timeout", True),  # a different suspect reason starts again
        ("crashed", "crashed", False),
        ("cpu", None, False),  # our own limits, reached: the file's verdict
        ("memory", None, False),
        ("resolution", None, False),
        (None, None, False),  # FFmpeg's own error
    ],
)
def test_host_faults_are_retried_and_a_repeated_suspect_is_the_files(
    reason: str | None, suspect: str | None, retried: bool
) -> None:
    fault = process.host_fault(runner.FFmpegError(["ffmpeg"], -9, "", reason), suspect)
    assert (fault is not None) == retried
    if fault is not None:
        assert fault.reason == reason and is_transient(fault)
    probed = process.host_fault(ProbeError("x", reason), suspect)
    assert (probed is not None) == retried
    assert process.host_fault(ProbeError("x", "format"), None) is None, "a container off the list is the file's"
