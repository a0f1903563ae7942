"""How to split a worker host's cores: several FFmpeg at once with few threads each, or one with all.

Drains the same backlog with one worker host per layout (``celery --concurrency`` x
``FFMPEG_THREADS``), side by side in one run, on moto server and SQLite: videos per hour and
how busy the CPUs were. Writes its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
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
from bench.job import CLIP, environment, local_aws, tree_cpu_seconds
from bench.pipeline import bar, machine, write_section
from tests.clips import make_clip
from tests.conftest import ROOT, Worker, post_upload, signup_and_login

CORES = os.cpu_count() or 2
# (pool processes, FFmpeg threads each): one per core with one thread; the unit's default (one
# per core, FFmpeg on all cores); one FFmpeg using every core.
LAYOUTS = [(CORES, 1), (CORES, CORES), (1, CORES)]


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
    parser.add_argument("--clips", type=int, default=6, help="backlog size (default 6)")
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory(prefix="videoproc-bench-cores-") as tmp:
        work = Path(tmp)
        (work / "scratch").mkdir()
        with local_aws() as aws:
            env = environment(work, aws)
            os.environ.update(env)
            bar(0, len(LAYOUTS) + 1, "making the clip")
            clip = make_clip(work / "clip.mp4", *CLIP)
            app = create_app()
            with app.app_context():
                flask_migrate.upgrade(directory=str(ROOT / "migrations"))
                ensure_bucket(get_settings(app))
            for n, (concurrency, threads) in enumerate(LAYOUTS):
                bar(1 + n, len(LAYOUTS) + 1, f"{concurrency} x {threads} threads")
                results[(concurrency, threads)] = drain(work, env, clip, args.clips, concurrency, threads)
            bar(len(LAYOUTS) + 1, len(LAYOUTS) + 1, "done")
            sys.stderr.write("\n")
    best = min(results, key=lambda k: results[k][0])
    lines = [
        "## Splitting a host's cores",
        "",
        f"Written by `python -m bench.concurrency --clips {args.clips}` (in `make bench`): the same backlog of "
        f"{args.clips} clips ({CLIP[0]}x{CLIP[1]}, {CLIP[2]} s) drained by one worker host per layout, on {machine()}.",
        "",
        "| Pool processes x FFmpeg threads | Drain s | Clips per hour | CPUs busy |",
        "|---|---|---|---|",
    ]
    for (concurrency, threads), (seconds, cpu) in results.items():
        mark = " (fastest)" if (concurrency, threads) == best else ""
        lines.append(
            f"| {concurrency} x {threads}{mark} | {seconds:.1f} | {3600 * args.clips / seconds:.0f} | "
            f"{cpu / seconds / CORES:.0%} |"
        )
    lines.append("")
    write_section("concurrency", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
