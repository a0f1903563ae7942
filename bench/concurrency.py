"""A backlog drained by one worker host, and how to split its cores: one FFmpeg per core, or one using all.

Drains the same backlog (20 uploads of the first ``SECONDS`` of the 1080p reference input) with
one worker host per layout (``celery --concurrency`` x ``FFMPEG_THREADS``), side by side in one
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
from app.aws import ensure_bucket, ensure_queues
from app.extensions import db, get_settings
from app.models import Video
from bench import reference
from bench.job import CORES, INPUT, environment, local_aws, tree_cpu_seconds
from bench.pipeline import bar, machine, write_section
from config.settings import ffmpeg_threads
from tests.conftest import ROOT, Worker, post_upload, signup_and_login

SECONDS = 10.0  # of the reference input: with the bumpers, 14 s out
# (pool processes, FFmpeg threads each): one FFmpeg per core with one thread (the unit's default),
# and one FFmpeg using every core. (One per core with every core's threads each, oversubscribed,
# drained slowest of all: 432 videos an hour against 606 for the default, in docs/benchmarks.md.)
LAYOUTS = [(CORES, 1), (1, CORES)]


def drain(
    work: Path, env: dict[str, str], clip: Path, clips: int, concurrency: int, threads: int
) -> tuple[float, float]:
    """Return the seconds to drain ``clips`` uploads, and the worker's CPU-seconds meanwhile."""
    name = f"c{concurrency}t{threads}"
    env = env | {"FFMPEG_THREADS": str(threads), "SQS_QUEUE_NAME": f"bench-{name}"}
    os.environ.update(env)
    app = create_app()
    with app.app_context():
        ensure_queues(get_settings(app))
    worker = Worker(env, work / f"{name}.log", name, concurrency=concurrency)
    try:
        worker.wait_ready()
        client = app.test_client()
        headers = signup_and_login(client, f"{name}@example.com")
        cpu_before, started = tree_cpu_seconds(worker.proc.pid), time.monotonic()
        ids = [post_upload(client, headers, clip).json["video_id"] for _ in range(clips)]
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
    parser.add_argument("--quick", action="store_true", help="2 clips of 5 s, two layouts; docs untouched")
    args = parser.parse_args(argv)
    layouts = LAYOUTS
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
                bar(1 + n, len(layouts) + 1, f"{concurrency} x {threads} threads")
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
    default = (CORES, ffmpeg_threads(CORES))  # the unit's: one pool process per core
    best = min(results, key=lambda k: results[k][0])
    lines = [
        "## A backlog on one worker host, and how to split its cores",
        "",
        f"Written by `python -m bench.concurrency --clips {clips}` (in `make bench`) on {machine()}: the same "
        f"backlog of {clips} uploads ({SECONDS:g} s of the {INPUT} reference input; {SECONDS:g} s + bumpers out) "
        "uploaded at once through the API and drained by one worker host per layout, one after the other in one "
        "run: first upload's 202 to the last `processed`. Target: CPUs at least 90% busy.",
        "",
        "| Pool processes x FFmpeg threads | Drain s | Videos per hour | Instance-s per video | CPU-s per video "
        "| CPUs busy |",
        "|---|---|---|---|---|---|",
    ]
    for layout, (seconds, cpu) in results.items():
        marks = [m for m, on in (("default", layout == default), ("fastest", layout == best)) if on]
        lines.append(
            f"| {layout[0]} x {layout[1]}{' (' + ', '.join(marks) + ')' if marks else ''} | {seconds:.1f} | "
            f"{3600 * clips / seconds:.0f} | {seconds / clips:.2f} | {cpu / clips:.2f} | {cpu / seconds / CORES:.0%} |"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
