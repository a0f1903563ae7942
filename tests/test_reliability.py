"""Fault injection with real processes: no video lost, none processed twice.

Each test runs its own queue (and dead-letter queue) with short timeouts, real
`celery -A tasks worker` processes, moto server, FFmpeg and the database, and asserts
on the final rows and S3 objects. Figures are printed (run with -s) for docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from domain.extensions import db, get_settings
from domain.models import Video
from domain.queue import enqueue_video
from domain.storage import aws_client, get_storage
from ops import dlq
from ops.aws import ensure_queues, queue_url
from tests.clips import make_clip
from tests.conftest import (
    Worker,
    post_upload,
    queue_empty,
    signup_and_login,
    unique_email,
    wait_for,
)
from tests.proxy import TcpProxy

pytestmark = pytest.mark.e2e
# Seconds, scaled down from production (120 s visibility, 10 s heartbeat, 60 s stale).
QUICK = {"SQS_VISIBILITY_TIMEOUT": "3", "HEARTBEAT_SECONDS": "0.5", "STALE_AFTER_SECONDS": "2"}
# A job made long by the time its download takes (S3 through a throttled proxy), not by a slow
# encode that a faster machine would finish early.


@dataclass
class Stack:
    app: Flask
    env: dict[str, str]
    client: FlaskClient
    headers: dict[str, str]

    def upload(self, path: Path) -> Any:
        return post_upload(self.client, self.headers, path, title=path.stem)

    def row(self, video_id: str) -> Video:
        with self.app.app_context():
            found = db.session.get(Video, video_id)
            assert found is not None
            db.session.expunge(found)
            return found

    def wait_status(self, video_id: str, status: str, timeout: float = 180) -> Video:
        return wait_for(lambda: (r := self.row(video_id)).status == status and r, timeout=timeout)

    def keys(self, video_id: str) -> list[str]:
        with self.app.app_context():
            return sorted(k for k in get_storage().keys("") if video_id in k)


@pytest.fixture
def stack(make_app: Callable[..., Flask], app: Flask) -> Callable[..., Stack]:
    """Build an API app on a queue of its own, with the given extra settings."""

    def build(env: dict[str, str], **overrides: Any) -> Stack:
        full = {"SQS_QUEUE_NAME": f"rel-{uuid.uuid4().hex[:8]}", **QUICK, **env}
        flask_app = make_app(full, **overrides)
        with flask_app.app_context():
            ensure_queues(get_settings(flask_app))
        client = flask_app.test_client()
        return Stack(flask_app, full, client, signup_and_login(client, unique_email()))

    return build


def counted(worker: Worker, outcome: str) -> None:
    """Wait until ``worker`` has counted exactly one job ending so (it counts just after the row's commit)."""
    wait_for(lambda: worker.metric("videoproc_jobs_total", outcome=outcome) == 1, timeout=10, what=f"one {outcome}")


def log_time(line: str) -> float:
    """Return the timestamp of a key=value log line as epoch seconds."""
    return datetime.fromisoformat(line.split()[0].removeprefix("ts=")).timestamp()


def ffmpeg_running(video_id: str) -> bool:
    return subprocess.run(["pgrep", "-f", f"ffmpeg.*{video_id}"], capture_output=True).returncode == 0


def scratch_left(env: dict[str, str], video_id: str) -> list[Path]:
    return list(Path(env["WORKER_TMP_DIR"]).glob(f"videoproc-job-*-{video_id}-*"))


def ffmpeg_pids(video_id: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", f"ffmpeg.*{video_id}"], capture_output=True, text=True).stdout
    return [int(pid) for pid in found.split()]


def wait_encoding(s: Stack, video_id: str) -> None:
    """Wait until the video's encode has reported progress (so FFmpeg is running its main command)."""
    wait_for(lambda: (r := s.row(video_id)).status == "processing" and r.progress > 10, timeout=120, interval=0.05)


@contextmanager
def encode_frozen(s: Stack, video_id: str) -> Iterator[list[int]]:
    """Hold the video's encode mid-way, however fast the machine: SIGSTOP its FFmpeg, SIGCONT on the way out.

    A frozen FFmpeg is also what a stalled decode looks like to the worker: alive, reporting nothing.
    """
    wait_encoding(s, video_id)
    pids = ffmpeg_pids(video_id)
    assert pids, "FFmpeg is running"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield pids
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


@pytest.fixture
def slow_s3(aws_endpoint: str) -> Iterator[Callable[[Path, float], TcpProxy]]:
    """Make proxies to S3 through which downloading a clip takes the given seconds; close them after."""
    proxies: list[TcpProxy] = []

    def make(clip: Path, seconds: float) -> TcpProxy:
        proxies.append(TcpProxy(int(aws_endpoint.rsplit(":", 1)[1]), download_rate=clip.stat().st_size / seconds))
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.cut()


def wait_working(s: Stack, video_id: str) -> None:
    wait_for(lambda: s.row(video_id).status == "processing", timeout=120, interval=0.1)


def test_kill_9_mid_job_restarts_elsewhere(
    stack: Callable, start_worker: Callable[..., Worker], clip: Callable, base_env: dict, slow_s3: Callable
) -> None:
    s = stack({})
    slow = slow_s3(clip("portrait.mp4"), seconds=20)
    a = start_worker("a", {**s.env, "S3_ENDPOINT_URL": slow.url})
    video_id = s.upload(clip("portrait.mp4")).json["video_id"]
    wait_working(s, video_id)
    os.killpg(a.proc.pid, signal.SIGKILL)  # the instance is gone: worker, pool and FFmpeg
    a.proc.wait()
    b = start_worker("b", s.env)
    done = s.wait_status(video_id, "processed")  # the message came back after its visibility timeout
    counted(b, "processed")
    assert done.attempts == 2 and done.progress == 100
    assert s.keys(video_id) == [
        f"originals/{video_id}/portrait.mp4",
        f"processed/{video_id}/poster.jpg",
        f"processed/{video_id}/video.mp4",
    ]
    assert not ffmpeg_running(video_id) and scratch_left(base_env, video_id) == []


def test_job_three_times_longer_than_visibility_runs_once(
    stack: Callable, start_worker: Callable[..., Worker], clip: Callable, slow_s3: Callable
) -> None:
    s = stack({})
    slow = slow_s3(clip("portrait.mp4"), seconds=18)  # the job outlasts 3 s of visibility 3 times, however it reads
    workers = [start_worker(name, {**s.env, "S3_ENDPOINT_URL": slow.url}) for name in ("a", "b")]
    video_id = s.upload(clip("portrait.mp4")).json["video_id"]
    done = s.wait_status(video_id, "processed")
    claims = [line for w in workers for line in w.lines("claimed", video_id)]
    skipped = [line for w in workers for line in w.lines("nothing to do", video_id)]
    finished = wait_for(lambda: [line for w in workers for line in w.lines("msg=processed", video_id)], timeout=10)
    runtime = log_time(finished[0]) - log_time(claims[0])
    visibility = int(s.env["SQS_VISIBILITY_TIMEOUT"])
    print(
        f"\nlong job: ran {runtime:.1f}s = {runtime / visibility:.1f}x the visibility timeout; "
        f"executions={len(claims)}, redeliveries={len(skipped)}"
    )
    assert runtime >= 3 * visibility, "the job must outlast the visibility timeout for this test to mean anything"
    assert len(claims) == 1 and skipped == [] and done.attempts == 1


def test_s3_outage_is_retried_then_processed(
    stack: Callable, start_worker: Callable[..., Worker], clip: Callable, aws_endpoint: str
) -> None:
    s = stack({})
    proxy = TcpProxy(int(aws_endpoint.rsplit(":", 1)[1]))
    a = start_worker("a", {**s.env, "S3_ENDPOINT_URL": proxy.url})
    proxy.cut()
    video_id = s.upload(clip("small.mp4")).json["video_id"]
    wait_for(lambda: a.metric("videoproc_retries_total", reason="transient") >= 2, timeout=60)
    proxy.restore()
    done = s.wait_status(video_id, "processed", timeout=120)
    assert done.attempts == 1, "retried in the same attempt: not a redelivery"
    counted(a, "processed")
    assert f"processed/{video_id}/video.mp4" in s.keys(video_id)
    proxy.cut()


def test_s3_lost_while_ffmpeg_reads_the_original_is_retried_not_failed(
    stack: Callable, start_worker: Callable[..., Worker], slow_s3: Callable, tmp_path: Path
) -> None:
    s = stack({})
    # Index first (a phone's "optimised for streaming"): FFmpeg reads the original as it arrives (tasks/relay.py).
    original = make_clip(tmp_path / "portrait.mp4", 720, 1280, 20, extra=("-movflags", "+faststart"))
    slow = slow_s3(original, seconds=16)
    a = start_worker("a", {**s.env, "S3_ENDPOINT_URL": slow.url})
    video_id = s.upload(original).json["video_id"]
    wait_encoding(s, video_id)
    assert s.row(video_id).progress < 50, "cut while FFmpeg still reads"
    slow.cut()
    wait_for(lambda: a.metric("videoproc_retries_total", reason="transient"), timeout=60)
    slow.restore()
    done = s.wait_status(video_id, "processed", timeout=180)
    assert done.attempts == 1 and done.error_code is None
    assert a.metric("videoproc_retries_total", reason="host") == 0, "S3's fault: FFmpeg and the probe were not blamed"
    assert s.keys(video_id) == [
        f"originals/{video_id}/portrait.mp4",  # kept: a broken read is not a broken video
        f"processed/{video_id}/poster.jpg",
        f"processed/{video_id}/video.mp4",
    ]


def test_uploads_accepted_while_sqs_is_down_are_swept_in(
    stack: Callable, start_worker: Callable[..., Worker], clip: Callable, aws_endpoint: str
) -> None:
    proxy = TcpProxy(int(aws_endpoint.rsplit(":", 1)[1]))
    s = stack(
        {"SWEEP_AFTER_SECONDS": "0"},
        SQS_ENDPOINT_URL=proxy.url,
        CELERY_BROKER_URL=f"sqs://testing:testing@127.0.0.1:{proxy.port}",
    )
    start_worker("a", {k: v for k, v in s.env.items()}, concurrency=2)  # the worker reaches SQS directly
    proxy.cut()
    answers = [s.upload(clip(name)) for name in ("small.mp4", "clip.mov", "silent.mp4")]
    assert [r.status_code for r in answers] == [503, 503, 503]
    ids = [r.json["video_id"] for r in answers]
    assert {s.row(v).status for v in ids} == {"uploaded"}
    proxy.restore()
    result = s.app.test_cli_runner().invoke(args=["videos", "sweep"])
    assert "requeued 3" in result.output, result.output
    finished = [s.wait_status(v, "processed", timeout=120) for v in ids]
    print(f"\nSQS outage: {len(ids)} uploads kept as uploaded, swept in, all processed")
    assert [f.attempts for f in finished] == [1, 1, 1]
    proxy.cut()


def test_malformed_and_unknown_messages_do_not_block_the_queue(
    stack: Callable, start_worker: Callable[..., Worker], clip: Callable
) -> None:
    s = stack(
        {
            "SQS_VISIBILITY_TIMEOUT": "2",
            "HEARTBEAT_SECONDS": "0.3",
            "STALE_AFTER_SECONDS": "1",
            "SQS_MAX_RECEIVE_COUNT": "2",
        }
    )
    a = start_worker("a", s.env)
    sqs = aws_client("sqs", get_settings(s.app))
    sqs.send_message(QueueUrl=queue_url(get_settings(s.app), sqs), MessageBody="this is not a celery message")
    unknown = str(uuid.uuid4())
    with s.app.app_context():
        enqueue_video(unknown, str(uuid.uuid4()))
    video_id = s.upload(clip("small.mp4")).json["video_id"]
    s.wait_status(video_id, "processed", timeout=120)
    wait_for(lambda: a.lines("nothing to do", unknown, "reason=deleted"), timeout=30)
    dead = wait_for(lambda: dlq.list_dead(get_settings(s.app)), timeout=60)
    print(f"\nmalformed: dead-lettered after {dead[0]['receive_count']} receives; unknown video acknowledged")
    assert [d["video_id"] for d in dead] == [None] and dead[0]["task"] is None
    result = s.app.test_cli_runner().invoke(args=["aws", "dlq-redrive"])
    assert "1 message(s) moved back" in result.output


def test_truncated_upload_fails_once_with_a_reason(
    stack: Callable, start_worker: Callable[..., Worker], clip: Callable, tmp_path: Path
) -> None:
    s = stack({})
    a = start_worker("a", s.env)
    whole = make_clip(tmp_path / "whole.mp4", 1280, 720, 20, extra=("-movflags", "+faststart"))
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 5])  # header intact, data cut off
    response = s.upload(cut)
    assert response.status_code == 202  # the header looks fine: only decoding finds out
    video_id = response.json["video_id"]
    failed = s.wait_status(video_id, "failed", timeout=120)
    assert failed.error_code == "undecodable" and "ends after" in (failed.error_message or "")
    wait_for(lambda: queue_empty(s.app), timeout=60)  # acknowledged, nothing left to redeliver
    assert s.row(video_id).attempts == 1
    counted(a, "failed")
    assert sum(a.metric("videoproc_retries_total", reason=r) for r in ("host", "transient", "worker_lost")) == 0
    assert s.keys(video_id) == [f"originals/{video_id}/cut.mp4"]


def test_sigterm_mid_job_hands_the_job_over(
    stack: Callable, start_worker: Callable[..., Worker], clip: Callable, base_env: dict, slow_s3: Callable
) -> None:
    # The row goes stale after 300 s and the message comes back after 600: processed within the
    # 120 s this waits, the job was handed over at once, by neither.
    s = stack(
        {
            "SQS_VISIBILITY_TIMEOUT": "600",
            "HEARTBEAT_SECONDS": "1",
            "STALE_AFTER_SECONDS": "300",
            "SHUTDOWN_GRACE_SECONDS": "1",
        }
    )
    slow = slow_s3(clip("portrait.mp4"), seconds=20)
    a = start_worker("a", {**s.env, "S3_ENDPOINT_URL": slow.url})
    video_id = s.upload(clip("portrait.mp4")).json["video_id"]
    wait_working(s, video_id)
    b = start_worker("b", s.env)
    a.proc.send_signal(signal.SIGTERM)  # an autoscaling group scaling in
    a.proc.wait(timeout=60)
    done = s.wait_status(video_id, "processed", timeout=120)
    # a has exited: its log is the only witness of how it let go (the row handed back, then a retry sent)
    assert a.lines("interrupted; row handed back", video_id) and a.lines(" retry: ", "WorkerLostError")
    assert done.attempts == 2
    counted(b, "processed")
    assert not ffmpeg_running(video_id) and scratch_left(base_env, video_id) == []


def pool_processes(worker: Worker) -> list[int]:
    """Return the pids of the worker's pool processes (the main process's children)."""
    children = Path(f"/proc/{worker.proc.pid}/task/{worker.proc.pid}/children").read_text().split()
    return [int(pid) for pid in children]


def test_ffmpeg_killed_from_outside_is_retried_not_blamed_on_the_file(
    stack: Callable, start_worker: Callable[..., Worker], clip: Callable, slow_s3: Callable
) -> None:
    """The OOM killer or an operator SIGKILLs FFmpeg mid-encode: a retry processes the video, once."""
    s = stack({})
    slow = slow_s3(clip("portrait.mp4"), seconds=8)  # FFmpeg reads as it arrives: mid-encode for seconds
    a = start_worker("a", {**s.env, "S3_ENDPOINT_URL": slow.url})
    video_id = s.upload(clip("portrait.mp4")).json["video_id"]
    wait_encoding(s, video_id)
    pids = ffmpeg_pids(video_id)
    assert pids, "FFmpeg is running"
    for pid in pids:  # the jail's bubblewrap, then FFmpeg: killing the first may already have ended the second
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    done = s.wait_status(video_id, "processed", timeout=180)
    assert a.metric("videoproc_retries_total", reason="host") == 1, "the host's fault, not the file's"
    assert a.metric("videoproc_retries_total", reason="transient") == 0
    counted(a, "processed")
    assert done.attempts == 1 and done.error_code is None
    assert s.keys(video_id) == [
        f"originals/{video_id}/portrait.mp4",
        f"processed/{video_id}/poster.jpg",
        f"processed/{video_id}/video.mp4",
    ]


def test_a_probe_stalled_past_its_timeout_is_retried_and_the_original_kept(
    stack: Callable, start_worker: Callable[..., Worker], clip: Callable, aws_endpoint: str
) -> None:
    """ffprobe times out on a good file (a host too busy, a stalled read): retried in a fresh process, processed."""
    s = stack({})
    stalled = TcpProxy(int(aws_endpoint.rsplit(":", 1)[1]), download_rate=1)  # 1 KiB, then nothing for minutes
    a = start_worker("a", {**s.env, "S3_ENDPOINT_URL": stalled.url, "FFPROBE_TIMEOUT": "3"})
    video_id = s.upload(clip("small.mp4")).json["video_id"]
    wait_for(lambda: a.metric("videoproc_retries_total", reason="host"), timeout=60, what="the first try's retry")
    stalled.download_rate = None  # the host recovers: new connections are fast, and the old ones dropped
    stalled.cut()
    stalled.restore()
    done = s.wait_status(video_id, "processed", timeout=120)
    assert a.metric("videoproc_retries_total", reason="host") == 1, "a suspect: tried once more, in a fresh process"
    assert done.attempts == 1 and done.error_code is None
    assert s.keys(video_id) == [
        f"originals/{video_id}/small.mp4",  # never deleted, never quarantined
        f"processed/{video_id}/poster.jpg",
        f"processed/{video_id}/video.mp4",
    ]
    stalled.cut()


def test_a_pool_process_killed_alone_is_taken_over_before_the_row_goes_stale(
    stack: Callable, start_worker: Callable[..., Worker], clip: Callable, base_env: dict, slow_s3: Callable
) -> None:
    # No sweeper runs, the row goes stale after 300 s and the message comes back after 600:
    # processed within the 60 s this waits proves the main process's takeover.
    s = stack({"SQS_VISIBILITY_TIMEOUT": "600", "HEARTBEAT_SECONDS": "5", "STALE_AFTER_SECONDS": "300"})
    slow = slow_s3(clip("portrait.mp4"), seconds=6)
    a = start_worker("a", {**s.env, "S3_ENDPOINT_URL": slow.url})
    video_id = s.upload(clip("portrait.mp4")).json["video_id"]
    wait_working(s, video_id)
    [pool] = pool_processes(a)
    os.kill(pool, signal.SIGKILL)  # the OOM killer's choice: the pool process, not the worker
    done = s.wait_status(video_id, "processed", timeout=60)
    assert a.proc.poll() is None, "the worker itself lives"
    assert done.attempts == 2 and done.progress == 100
    assert not ffmpeg_running(video_id) and scratch_left(base_env, video_id) == []
    assert a.metric("videoproc_retries_total", reason="worker_lost") == 1, "the main process's retry is counted"
    counted(a, "processed")
