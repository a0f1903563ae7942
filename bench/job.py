"""Measure the whole worker job on a local stack: from the upload's 202 to ``processed``.

Starts moto server, a database, and a real ``celery -A tasks worker`` at the production
unit's concurrency, then uploads the 1080p reference input through the API to the idle
worker: the time to publish (download, probe, encode, poster, upload, database), next to
FFmpeg's floor and ``Pipeline.run`` alone on the same file, and the same job on a second
worker with ``OPTIMIZE=off`` (what the optimize stage's send after ``processed`` costs
publishing), interleaved; and the pickup latency over many uploads. Writes its section of
docs/benchmarks.md (unless ``--quick``). The backlog a host drains is ``bench.concurrency``'s.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import flask_migrate
from moto.server import ThreadedMotoServer
from sqlalchemy import select

from app import create_app
from bench import reference
from bench.pipeline import PROFILE, SANDBOX, Runs, bar, machine, spread, write_section
from domain.extensions import db, get_settings
from domain.models import Video
from media.pipeline import Pipeline
from media.probe import probe
from ops.aws import ensure_bucket, ensure_queues
from tests.clips import make_clip
from tests.conftest import GENEROUS, ROOT, Worker, free_port, post_upload, signup_and_login

INPUT = "1080p landscape"  # bench.reference's; the profile keeps 30 s of its 45
CORES = os.cpu_count() or 2
CONCURRENCY = CORES + 1  # deploy/envfile.py: a worker instance's pool, one process more than cores
TICKS = os.sysconf("SC_CLK_TCK")
STEP = re.compile(r"\b(download|encode|upload)_seconds=([\d.]+)")  # tasks/process.py's "processed" line
FETCHED = re.compile(r"\bfetched_bytes=(\d+)")
# What tasks/process.py logs as a job ends, its scratch directory and FFmpeg gone.
JOB_ENDS = ('msg="stopped:', "msg=processed", "result not recorded", "msg=failed")
STEPS = (
    ("download", "opening the original (its download then runs under the encode: tasks/relay.py)"),
    ("encode", "probe, encode, poster, reading the original as it arrives"),
    ("upload", "uploading the results"),
)


def cpu_seconds(pid: int) -> float:
    """Return the CPU seconds used by ``pid`` and its reaped children (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    # utime, stime, cutime, cstime: a reaped process's time lands in its parent's c* fields
    return sum(int(f) for f in fields[11:15]) / TICKS


def tree_cpu_seconds(pid: int) -> float:
    """Return the CPU seconds used by ``pid`` and all its descendants, living or reaped."""
    return sum(cpu_seconds(child) for child in [pid, *_descendants(pid)])


def own_cpu() -> float:
    """Return this process's CPU seconds: moto server's and the API's threads, and the bench's polling."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


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
    limits = ("LOGIN_LIMIT_PER_ADDRESS", "LOGIN_LIMIT_PER_ACCOUNT_ADDRESS", "SIGNUP_LIMIT_PER_ADDRESS")
    env |= dict.fromkeys((*limits, "SIGNUP_LIMIT_PER_ACCOUNT"), GENEROUS)
    return env | {"UPLOAD_LIMIT_PER_USER": GENEROUS}


def main(argv: list[str] | None = None) -> int:
    """Time publishing on an idle worker next to the floor and the pipeline, then pickups; write the section."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs of each (default 3)")
    parser.add_argument("--pickups", type=int, default=50, help="uploads whose pickup is timed (default 50)")
    parser.add_argument("--quick", action="store_true", help="5 s of the input, one run, 3 pickups; docs untouched")
    args = parser.parse_args(argv)
    seconds = 5.0 if args.quick else None
    if args.quick:
        args.runs, args.pickups = 1, 3
    with tempfile.TemporaryDirectory(prefix="videoproc-bench-job-") as tmp:
        work = Path(tmp)
        (work / "scratch").mkdir()
        with local_aws() as aws:
            env = environment(work, aws)
            os.environ.update(env)  # the API in this process reads the same settings
            src = reference.reference(INPUT, seconds)
            runs, picked = measure(work, env, src, args.runs, args.pickups)
    p50, p95 = percentile(picked, 0.5), percentile(picked, 0.95)
    fetched, src_mb = runs.times.get("fetched", []), src.stat().st_size / 1e6
    lines = [
        "## The whole job on an idle worker",
        "",
        f"Written by `python -m bench.job --runs {args.runs} --pickups {args.pickups}` (in `make bench`) on "
        f"{machine()}: moto server, SQLite, one `celery -A tasks worker --concurrency {CONCURRENCY}` (a worker "
        f"instance's), FFmpeg's threads shared ({SANDBOX.threads} for a lone job); the {INPUT} reference input "
        f"({reference.REFERENCES[INPUT][3]:g} s, "
        f"{PROFILE.max_duration:g} s kept) uploaded through the API. {args.runs} interleaved runs each, medians "
        "(min to max). Targets: the whole job ≤ 1.10x the floor; publish ≤ 1.3x the pipeline; pickup p95 ≤ 1 s.",
        "",
        "| What | Time | Ratio |",
        "|---|---|---|",
        f"| floor: one FFmpeg command on the local file (as in the pipeline's table) | {spread(runs.times['floor'])} "
        "| 1 |",
        f"| probe + `Pipeline.run` alone (warm, bumpers cached) | {spread(runs.times['pipeline'])} | "
        f"{runs.ratio('pipeline', 'floor'):.3f}x the floor |",
        f"| the whole job: upload's 202 → `processed` on an idle worker | {spread(runs.times['publish'])} | "
        f"**{runs.ratio('publish', 'floor'):.2f}x the floor**, {runs.ratio('publish', 'pipeline'):.2f}x the pipeline |",
        f"| the same on a worker with `OPTIMIZE=off` (no optimize stage to start) | {spread(runs.times['off'])} | "
        f"{runs.ratio('off', 'floor'):.2f}x the floor: the stage's default makes publishing "
        f"**{runs.ratio('publish', 'off'):.2f}x** this |",
        *(
            f"| of which {what} (the worker's log) | {spread(runs.times[step], digits=2)} | "
            f"{runs.ratio(step, 'publish'):.0%} of the whole job |"
            for step, what in STEPS
            if step in runs.times
        ),
        *(
            [
                f"| of the original's {src_mb:.0f} MB, fetched from S3 as FFmpeg read it | "
                f"{spread(fetched, unit='MB', digits=0)} | {statistics.median(fetched) / src_mb:.0%} of it |"
            ]
            if fetched
            else []
        ),
        f"| CPU seconds: the floor's FFmpeg | {spread(runs.cpu['floor'])} | 1 |",
        f"| CPU seconds: probe + `Pipeline.run` alone | {spread(runs.cpu['pipeline'])} | "
        f"{runs.cpu_ratio('pipeline', 'floor'):.3f}x the floor |",
        f"| CPU seconds: the whole job on the worker host (its processes and their FFmpeg, ffprobe) | "
        f"{spread(runs.cpu['publish'])} | **{runs.cpu_ratio('publish', 'floor'):.3f}x the floor** |",
        f"| CPU seconds meanwhile in moto server and the API (on AWS, S3 and SQS are not on the worker host) | "
        f"{spread(runs.cpu['stand-in'], digits=2)} | {runs.cpu_ratio('stand-in', 'floor'):.0%} of the floor's |",
        f"| pickup: upload's 202 → the task's claim, {args.pickups} uploads of a 4 s clip | "
        f"p50 {p50 * 1000:.0f} ms, **p95 {p95 * 1000:.0f} ms** | max {picked[-1] * 1000:.0f} ms |",
        "",
        "How to read these: FFmpeg reads the original through the worker's relay as it downloads, so the job "
        "waits for no download; what the whole job adds to the floor's wall time here is mostly CPU taken from "
        "FFmpeg's two cores by moto server, which serves each ranged GET of S3 from a copy of the whole object, "
        "in Python, on the same two cores. The CPU rows split it: the worker host's own cost per job (what the "
        "instance bills) against the floor's, and what moto and the API used meanwhile.",
        "",
    ]
    text = "\n".join(lines)
    if not args.quick:
        write_section("job", text)
    print(text)
    return 0


def percentile(values: list[float], share: float) -> float:
    """Return the ``share`` percentile of sorted ``values`` (nearest rank)."""
    return values[min(len(values) - 1, int(share * len(values)))]


def measure(work: Path, env: dict[str, str], src: Path, runs: int, pickups: int) -> tuple[Runs, list[float]]:
    """Return the floor's, the pipeline's and publishing's times (interleaved), and the sorted pickups."""
    steps = 3 + runs
    bar(0, steps, "starting")
    small = make_clip(work / "small.mp4", 640, 480, 4)
    pipeline = Pipeline(PROFILE, work / "bumpers", SANDBOX)
    pipeline.bumpers()
    app = create_app()
    with app.app_context():
        flask_migrate.upgrade(directory=str(ROOT / "migrations"))
        ensure_bucket(get_settings(app))
        ensure_queues(get_settings(app))
    for name in ("", "werkzeug"):  # this process's API and moto server (alembic's logging config): quiet
        logging.getLogger(name).setLevel(logging.WARNING)
    # The same job on a worker that starts no optimize stage, on a queue of its own (its own API).
    off_app = create_app(get_settings(app).replace(SQS_QUEUE_NAME=f"{env['SQS_QUEUE_NAME']}-off"))
    with off_app.app_context():
        ensure_queues(get_settings(off_app))
    result = Runs()
    worker = Worker(env, work / "worker.log", "bench", concurrency=CONCURRENCY)
    off_env = {**env, "OPTIMIZE": "off", "SQS_QUEUE_NAME": get_settings(off_app).SQS_QUEUE_NAME}
    off_worker = Worker(off_env, work / "worker-off.log", "bench-off", concurrency=CONCURRENCY)
    try:
        worker.wait_ready()
        off_worker.wait_ready()
        client = app.test_client()
        headers = signup_and_login(client, "bench@example.com")

        def encode(job: Path) -> None:
            pipeline.run(src, probe(str(src)), job)

        def publish(client: Any = client, worker: Worker = worker, variant: str = "publish") -> None:
            answer = post_upload(client, headers, src)
            assert answer.status_code == 202, answer.json
            started, video_id = time.monotonic(), answer.json["video_id"]
            host, stand_in = tree_cpu_seconds(worker.proc.pid), own_cpu()
            with app.app_context():
                while (status := db.session.scalar(select(Video.status).where(Video.id == video_id))) != "processed":
                    assert status != "failed", worker.text()[-2000:]
                    db.session.rollback()
                    time.sleep(0.05)
            result.times.setdefault(variant, []).append(time.monotonic() - started)
            if variant != "publish":
                return
            result.cpu.setdefault("publish", []).append(tree_cpu_seconds(worker.proc.pid) - host)
            result.cpu.setdefault("stand-in", []).append(own_cpu() - stand_in)
            for _ in range(50):  # the worker logs the job's steps as it records `processed`
                if line := worker.lines("msg=processed", f"video_id={video_id}"):
                    for step, seconds in STEP.findall(line[0]):
                        result.times.setdefault(step, []).append(float(seconds))
                    result.times.setdefault("fetched", []).extend(int(n) / 1e6 for n in FETCHED.findall(line[0]))
                    break
                time.sleep(0.1)

        for run in range(runs):  # interleaved: every variant sees the same machine load
            bar(1 + run, steps, f"run {run + 1}: floor, pipeline, whole job, and with OPTIMIZE=off")
            (job := work / f"run-{run}").mkdir()
            result.time("floor", partial(reference.floor, src, job / "floor.mp4", PROFILE))
            result.time("pipeline", partial(encode, job))
            publish()
            publish(off_app.test_client(), off_worker, "off")  # same database: the same user and token
        bar(1 + runs, steps, f"{pickups} pickups")
        picked = sorted(pickup(app, client, headers, small, worker) for _ in range(pickups))
        bar(steps, steps, "done")
        sys.stderr.write("\n")
    finally:
        worker.stop()
        off_worker.stop()
    return result, picked


def pickup(app: Any, client: Any, headers: dict[str, str], clip: Path, worker: Worker) -> float:
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
    while not any(worker.lines(f"video_id={video_id}", end) for end in JOB_ENDS):  # logged once cleaned up
        time.sleep(0.05)
    time.sleep(0.2)
    return max(0.0, ((claimed if claimed.tzinfo else claimed.replace(tzinfo=UTC)) - accepted).total_seconds())


if __name__ == "__main__":
    sys.exit(main())
