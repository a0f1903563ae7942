"""Measure the whole worker job on a local stack: what a clip costs in worker time.

Starts moto server, a database, and a real ``celery -A tasks worker`` at the production
unit's concurrency, then uploads through the API: one clip on an idle worker (upload's 202
to ``processed``, next to ``Pipeline.run`` alone on the same clip), and a backlog of clips
drained by the one worker host (instance-seconds and CPU-seconds per clip, the CPUs' use).
Writes its section of docs/benchmarks.md; docs/deploy-aws.md prices these numbers.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import flask_migrate
from moto.server import ThreadedMotoServer
from sqlalchemy import select

from app import create_app
from app.aws import ensure_bucket, ensure_queues
from app.extensions import db, get_settings
from app.models import Video
from bench.pipeline import PROFILE, SANDBOX, bar, machine, timed, write_section
from media.pipeline import Pipeline
from media.probe import probe
from tests.clips import make_clip
from tests.conftest import GENEROUS, ROOT, Worker, free_port, post_upload, signup_and_login

CLIP = (1080, 1920, 35)  # a portrait phone clip; the profile keeps 30 s of it
CONCURRENCY = 2  # deploy/systemd/videoproc-worker.service
TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """Return the CPU seconds used by ``pid`` and all its descendants, living or reaped."""
    total = 0.0
    for child in [pid, *_descendants(pid)]:
        try:
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        # utime, stime, cutime, cstime: a reaped process's time lands in its parent's c* fields
        total += sum(int(f) for f in fields[11:15]) / TICKS
    return total


def _descendants(pid: int) -> list[int]:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return []
    return [d for c in map(int, children) for d in (c, *_descendants(c))]


@contextmanager
def local_aws() -> Iterator[str]:
    """Run moto server in this process on a free port; yield its URL."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def environment(work: Path, aws: str) -> dict[str, str]:
    """The worker's and the API's environment: local AWS, a SQLite database, generous quotas."""
    env = {
        "APP_ENV": "testing",
        "SECRET_KEY": "bench-secret-key-of-at-least-32-bytes",
        "DATABASE_URL": f"sqlite:///{work / 'bench.db'}",
        "AWS_ENDPOINT_URL": aws,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "S3_BUCKET": "videoproc-bench",
        "SQS_QUEUE_NAME": "bench-job",
        "SQS_WAIT_TIME_SECONDS": "1",
        "WORKER_TMP_DIR": str(work / "scratch"),
        "UPLOAD_TMP_DIR": str(work / "scratch"),
        "USER_MAX_ACTIVE_VIDEOS": "1000",
        "USER_MAX_UPLOADS_PER_DAY": "1000",
        "USER_MAX_BYTES_PER_DAY": str(1 << 40),
        "LOG_LEVEL": "INFO",  # the worker's "ready." line
    }
    env |= {f"{r}_LIMIT_PER_{k}": GENEROUS for r in ("LOGIN", "SIGNUP") for k in ("ADDRESS", "ACCOUNT")}
    return env | {"UPLOAD_LIMIT_PER_USER": GENEROUS}


def main(argv: list[str] | None = None) -> int:
    """Run one clip on an idle worker, then a backlog of ``--clips``; write the section."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clips", type=int, default=6, help="backlog size (default 6)")
    parser.add_argument("--pickups", type=int, default=50, help="uploads whose pickup is timed (default 50)")
    parser.add_argument("--quick", action="store_true", help="2 clips, 10 pickups")
    args = parser.parse_args(argv)
    if args.quick:
        args.clips, args.pickups = 2, 10
    with tempfile.TemporaryDirectory(prefix="videoproc-bench-job-") as tmp:
        work = Path(tmp)
        (work / "scratch").mkdir()
        with local_aws() as aws:
            env = environment(work, aws)
            os.environ.update(env)  # the API in this process reads the same settings
            result = measure(work, env, args.clips, args.pickups)
    w, h, seconds = CLIP
    lines = [
        "## The whole job on a worker host",
        "",
        f"Written by `python -m bench.job --clips {args.clips} --pickups {args.pickups}` (in `make bench`): moto "
        f"server, SQLite, one `celery -A tasks worker --concurrency {CONCURRENCY}` (the unit's) on {machine()}, "
        f"{w}x{h} {seconds} s clips (FFmpeg's testsrc2 with a tone) uploaded through the API; the profile as above.",
        "",
        "| What | Value |",
        "|---|---|",
        f"| `Pipeline.run` alone on the clip (warm, bumpers cached) | {result['pipeline']:.2f} s |",
        f"| one clip on an idle worker: upload's 202 → `processed` | {result['publish']:.2f} s "
        f"({result['publish'] / result['pipeline']:.2f}x the pipeline) |",
        f"| backlog of {args.clips} drained (first 202 → last `processed`) | {result['drain']:.1f} s |",
        f"| instance-seconds per clip (drain ÷ clips, one host) | **{result['drain'] / args.clips:.2f} s** |",
        f"| worker CPU-seconds per clip (worker, pool and FFmpeg processes) | {result['cpu'] / args.clips:.2f} s |",
        f"| CPUs busy during the drain | {result['cpu'] / result['drain'] / (os.cpu_count() or 1):.0%} |",
        f"| throughput | {3600 * args.clips / result['drain']:.0f} clips per hour per host |",
        f"| pickup on an idle worker: upload's 202 → the task's claim, {args.pickups} uploads | "
        f"p50 {result['pickup_p50'] * 1000:.0f} ms, **p95 {result['pickup_p95'] * 1000:.0f} ms** "
        f"(max {result['pickup_max'] * 1000:.0f} ms) |",
        "",
    ]
    write_section("job", "\n".join(lines))
    print("\n".join(lines))
    return 0


def measure(work: Path, env: dict[str, str], clips: int, pickups: int) -> dict[str, float]:
    """Return the pipeline's, one published clip's and the drained backlog's times, and the pickups'."""
    steps = 5 + clips
    bar(0, steps, "making the clips")
    src = make_clip(work / "clip.mp4", *CLIP)
    small = make_clip(work / "small.mp4", 640, 480, 4)
    pipeline = Pipeline(PROFILE, work / "bumpers", SANDBOX)
    pipeline.bumpers()
    info = probe(str(src))
    bar(1, steps, "pipeline alone")
    runs = []
    for n in range(2):
        (job := work / f"pipeline-{n}").mkdir()
        runs.append(timed(lambda j=job: pipeline.run(src, info, j)))
    app = create_app()
    with app.app_context():
        flask_migrate.upgrade(directory=str(ROOT / "migrations"))
        ensure_bucket(get_settings(app))
        ensure_queues(get_settings(app))
    for name in ("", "werkzeug"):  # this process's API and moto server (alembic's logging config): quiet
        logging.getLogger(name).setLevel(logging.WARNING)
    bar(2, steps, "starting the worker")
    worker = Worker(env, work / "worker.log", "bench", concurrency=CONCURRENCY)
    try:
        worker.wait_ready()
        client = app.test_client()
        headers = signup_and_login(client, "bench@example.com")

        def upload() -> str:
            answer = post_upload(client, headers, src)
            assert answer.status_code == 202, answer.json
            return answer.json["video_id"]

        def wait(ids: list[str]) -> None:
            with app.app_context():
                while True:
                    statuses = dict(db.session.execute(select(Video.id, Video.status).where(Video.id.in_(ids))).all())
                    assert "failed" not in statuses.values(), worker.text()[-2000:]
                    if all(statuses.get(i) == "processed" for i in ids):
                        return
                    db.session.rollback()
                    time.sleep(0.1)

        bar(3, steps, "one clip, idle worker")
        started = time.monotonic()
        wait([upload()])
        publish = time.monotonic() - started
        cpu_before = tree_cpu_seconds(worker.proc.pid)
        started = time.monotonic()
        ids = []
        for n in range(clips):
            bar(4 + n, steps, f"backlog: upload {n + 1}")
            ids.append(upload())
        wait(ids)
        drain = time.monotonic() - started
        cpu = tree_cpu_seconds(worker.proc.pid) - cpu_before
        bar(4 + clips, steps, f"{pickups} pickups")
        picked = [pickup(app, client, headers, small) for _ in range(pickups)]
        bar(steps, steps, "done")
        sys.stderr.write("\n")
    finally:
        worker.stop()
    picked.sort()
    return {
        "pipeline": statistics.median(runs),
        "publish": publish,
        "drain": drain,
        "cpu": cpu,
        "pickup_p50": picked[len(picked) // 2],
        "pickup_p95": picked[min(len(picked) - 1, int(0.95 * len(picked)))],
        "pickup_max": picked[-1],
    }


def pickup(app: Any, client: Any, headers: dict[str, str], clip: Path) -> float:
    """Upload ``clip`` to the idle worker; return the seconds from the 202 to its claim, then cancel it."""
    answer = post_upload(client, headers, clip)
    accepted = datetime.now(UTC)
    assert answer.status_code == 202, answer.json
    video_id = answer.json["video_id"]
    with app.app_context():
        while True:
            claimed = db.session.scalar(select(Video.started_at).where(Video.id == video_id))
            db.session.rollback()
            if claimed is not None:
                break
            time.sleep(0.01)
    # Stop it, and wait until the worker is idle again: each pickup is on an idle worker.
    assert client.post(f"/api/videos/{video_id}/cancel", headers=headers).status_code in (200, 409)
    while not ffmpeg_gone(video_id):
        time.sleep(0.05)
    time.sleep(0.5)
    return max(0.0, ((claimed if claimed.tzinfo else claimed.replace(tzinfo=UTC)) - accepted).total_seconds())


def ffmpeg_gone(video_id: str) -> bool:
    return subprocess.run(["pgrep", "-f", f"ffmpeg.*{video_id}"], capture_output=True).returncode != 0


if __name__ == "__main__":
    sys.exit(main())
