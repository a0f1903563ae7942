"""A backlog drained by one worker host, and how to split its cores: one FFmpeg per core, or one using all.

Drains the same backlog (20 uploads of the first ``SECONDS`` of the 1080p reference input) with
one worker host per layout (``celery --concurrency`` x ``FFMPEG_THREADS``, 0 for the default:
the cores shared among the jobs running when an encode starts), side by side in one
run, on moto server and SQLite: videos per hour, instance-seconds and CPU-seconds per video,
and how busy the CPUs were. Writes its section of docs/benchmarks.md (unless ``--quick``);
docs/deploy-aws.md prices the default layout's numbers.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import flask_migrate
from sqlalchemy import select

from app import create_app
from bench import reference
from bench.job import CORES, INPUT, environment, local_aws, tree_cpu_seconds
from bench.pipeline import bar, machine, write_section
from domain.extensions import db, get_settings
from domain.models import Video
from ops.aws import ensure_bucket, ensure_queues
from tests.conftest import ROOT, Worker, post_upload, signup_and_login

SECONDS = 6.0  # of the reference input: with the bumpers, 10 s out
# (pool processes, FFMPEG_THREADS): the default (one pool process more than cores, so that one job's
# download and upload overlap the others' encodes; FFmpeg's threads the cores shared among the running
# jobs: one each in a backlog), one per core, and one FFmpeg using every core. (One per core with every
# core's threads each, oversubscribed, drained slowest of all: 432 videos an hour against 606 for one
# thread each, in docs/benchmarks.md.)
SHARED = 0
DEFAULT = (CORES + 1, SHARED)  # deploy/envfile.py: a worker instance's WORKER_CONCURRENCY
LAYOUTS = [DEFAULT, (CORES, SHARED), (1, CORES)]


def layout_name(layout: tuple[int, int]) -> str:
    return f"{layout[0]} x {layout[1] or 'shared'}"


def drain(
    work: Path, env: dict[str, str], clip: Path, clips: int, concurrency: int, threads: int
) -> tuple[float, float]:
    """Return the seconds a fresh worker takes to drain ``clips`` queued uploads, and its CPU-seconds meanwhile.

    The backlog is uploaded first, with no worker running: the clock starts when the worker is
    ready, so the API's own work on the uploads shares no CPU with the drain.
    """
    name = f"c{concurrency}t{threads or 'shared'}"
    env = env | {"FFMPEG_THREADS": str(threads), "SQS_QUEUE_NAME": f"bench-{name}"}
    os.environ.update(env)
    app = create_app()
    with app.app_context():
        ensure_queues(get_settings(app))
    client = app.test_client()
    headers = signup_and_login(client, f"{name}@example.com")
    ids = [post_upload(client, headers, clip).json["video_id"] for _ in range(clips)]
    worker = Worker(env, work / f"{name}.log", name, concurrency=concurrency)
    try:
        worker.wait_ready(poll=0.02)
        cpu_before, started = tree_cpu_seconds(worker.proc.pid), time.monotonic()
        with app.app_context():
            while True:
                statuses = set(db.session.scalars(select(Video.status).where(Video.id.in_(ids))).all())
                db.session.rollback()
                assert "failed" not in statuses, worker.text()[-2000:]
                if statuses == {"processed"}:
                    break
                time.sleep(0.1)
        return time.monotonic() - started, tree_cpu_seconds(worker.proc.pid) - cpu_before
    finally:
        worker.stop()


def main(argv: list[str] | None = None) -> int:
    """Drain the backlog once per layout; write the section."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clips", type=int, default=20, help="backlog size (default 20)")
    parser.add_argument("--quick", action="store_true", help="2 clips of 5 s, the default layout; docs untouched")
    args = parser.parse_args(argv)
    layouts = [DEFAULT] if args.quick else LAYOUTS
    seconds = 5.0 if args.quick else SECONDS
    if args.quick:
        args.clips = 2
    results = {}
    with tempfile.TemporaryDirectory(prefix="videoproc-bench-cores-") as tmp:
        work = Path(tmp)
        (work / "scratch").mkdir()
        with local_aws() as aws:
            env = environment(work, aws)
            os.environ.update(env)
            bar(0, len(layouts) + 1, "making the clip")
            clip = reference.reference(INPUT, seconds)
            app = create_app()
            with app.app_context():
                flask_migrate.upgrade(directory=str(ROOT / "migrations"))
                ensure_bucket(get_settings(app))
            for name in ("", "werkzeug"):  # this process's API and moto server (alembic's logging config): quiet
                logging.getLogger(name).setLevel(logging.WARNING)
            for n, (concurrency, threads) in enumerate(layouts):
                bar(1 + n, len(layouts) + 1, layout_name((concurrency, threads)))
                results[(concurrency, threads)] = drain(work, env, clip, args.clips, concurrency, threads)
            bar(len(layouts) + 1, len(layouts) + 1, "done")
            sys.stderr.write("\n")
    text = report(results, args.clips)
    if not args.quick:
        write_section("concurrency", text)
    print(text)
    return 0


def report(results: dict[tuple[int, int], tuple[float, float]], clips: int) -> str:
    """Return the section's Markdown: one row per layout, the default's marked."""
    best = min(results, key=lambda k: results[k][0])
    lines = [
        "## A backlog on one worker host, and how to split its cores",
        "",
        f"Written by `python -m bench.concurrency --clips {clips}` (in `make bench`) on {machine()}: the same "
        f"backlog of {clips} uploads ({SECONDS:g} s of the {INPUT} reference input; {SECONDS:g} s + bumpers out) "
        "queued through the API, then drained by a worker host started for it, one per layout, one after the "
        "other in one run: from the worker's `ready` to the last `processed`. *Shared*: `FFMPEG_THREADS` unset, "
        "each encode gets the host's cores divided by the jobs running when it starts (one thread each in a "
        "backlog, every core for a lone job). Target: CPUs at least 90% busy.",
        "",
        "| Pool processes x FFmpeg threads | Drain s | Videos per hour | Instance-s per video | CPU-s per video "
        "| CPUs busy |",
        "|---|---|---|---|---|---|",
    ]
    for layout, (seconds, cpu) in results.items():
        marks = [m for m, on in (("default", layout == DEFAULT), ("fastest", layout == best)) if on]
        lines.append(
            f"| {layout_name(layout)}{' (' + ', '.join(marks) + ')' if marks else ''} | {seconds:.1f} | "
            f"{3600 * clips / seconds:.0f} | {seconds / clips:.2f} | {cpu / clips:.2f} | {cpu / seconds / CORES:.0%} |"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
