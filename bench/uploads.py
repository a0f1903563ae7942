"""Measure uploads through the web tier: the direct path (parts to S3) against the form upload.

Starts moto server, a database (PostgreSQL when one answers on 127.0.0.1, else SQLite),
and the web tier as deployed (nginx → gunicorn, 2 workers x 4 threads). Then, side by side:

1. ``--clients`` concurrent clients each upload one 4.5 MB clip by the direct path (the
   API's two calls and the PUT to S3) and then by the form upload; p50/p95 of the API calls
   and of the whole upload, and the errors.
2. One large direct upload (``--big-mib``, 1 GiB by default) with ``client.uploader``
   against boto3's own ``upload_file`` to the same endpoint (with boto3's default checksums,
   and with none, as the direct upload), and the web processes' memory
   (RSS of gunicorn's processes) before and at its peak during the upload.

And where the CPU went: each process's CPU (from ``/proc``) per upload and per API call, against
the most the targets leave on these cores.

Writes its section of docs/benchmarks.md (unless ``--quick``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import boto3
import flask_migrate
import requests
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from app import create_app, timing
from bench.job import CORES, cpu_seconds, environment, own_cpu
from bench.pipeline import bar, machine, write_section
from client import uploader
from domain.extensions import get_settings
from ops.aws import ensure_bucket, ensure_queues
from tests.clips import make_clip
from tests.conftest import PASSWORD, POSTGRES_URL, ROOT, answers, free_port, serving, wait_for

MiB = 1024**2
BUCKET = "videoproc-bench"  # bench.job's environment
BIG_ROWS = {
    "ours": "direct upload (`client.uploader`)",
    "plain": "boto3 `upload_file`, S3's default checksum (as the direct upload)",
    "theirs": "boto3 `upload_file`, boto3's default CRC32 checksums",
}

# The processes that share the CPUs during the uploads, by a word of their command line (the
# first that matches: nginx's wrapper names gunicorn's socket), and the clients, this process.
PROCESSES = {
    "clients": "the clients (this process's threads)",
    "nginx": "nginx",
    "moto_server": "moto server (S3, SQS)",
    "gunicorn": "gunicorn: the app",
    "postgres": "PostgreSQL",
}


def cpu_by_process() -> dict[str, float]:
    """Return the CPU seconds used so far by the clients and by each kind of process in ``PROCESSES``."""
    used = dict.fromkeys(PROCESSES, 0.0) | {"clients": own_cpu()}
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes() if proc.name.isdigit() else b""
        except OSError:
            continue
        if kind := next((k for k in list(PROCESSES)[1:] if k.encode() in cmdline), None):
            used[kind] += cpu_seconds(int(proc.name))
    return used


@contextmanager
def cpu_spent(into: dict[str, float]) -> Iterator[None]:
    """Add to ``into`` the CPU seconds each kind of process uses in the block, and its wall seconds as ``wall``."""
    before, started = cpu_by_process(), time.perf_counter()
    yield
    after = cpu_by_process()
    for kind in PROCESSES:
        into[kind] = into.get(kind, 0.0) + after[kind] - before[kind]
    into["wall"] = into.get("wall", 0.0) + time.perf_counter() - started


def span(values: list[float]) -> str:
    """Return the range of ``values``, seconds."""
    return f"{min(values):.1f} to {max(values):.1f}"


def pct(values: list[float], q: float) -> float:
    """Return the ``q`` quantile (0..1) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms_row(label: str, values: list[float], bold: bool = False) -> str:
    """Return a table row of ``values``' p50 and p95 in milliseconds (no error count)."""
    p95 = f"{pct(values, 0.95) * 1000:.0f} ms"
    return f"| {label} | {pct(values, 0.5) * 1000:.0f} ms | {f'**{p95}**' if bold else p95} | |"


def rss_mib(pids: list[int]) -> float:
    """Return the resident memory of ``pids`` together, MiB."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            continue
    return total / 1024


def gunicorn_pids() -> list[int]:
    """Return the pids of this machine's gunicorn processes serving ``app:create_app()``."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"gunicorn" in cmdline and b"app:create_app()" in cmdline:
                found.append(int(proc.name))
    return found


def database(work: Path) -> tuple[str, Callable[[], None]]:
    """Return a fresh database URL (PostgreSQL if it answers) and how to drop it."""
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        conn = admin.connect()
    except OperationalError:
        return f"sqlite:///{work / 'bench.db'}", lambda: None
    name = f"videoproc_bench_{os.getpid()}"
    with conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    return POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}", drop


def login(url: str, email: str) -> str:
    body = {"email": email, "password": PASSWORD, "password_confirm": PASSWORD}
    requests.post(f"{url}/api/auth/signup", json=body, timeout=30).raise_for_status()
    answer = requests.post(f"{url}/api/auth/login", json={"email": email, "password": PASSWORD}, timeout=30)
    answer.raise_for_status()
    return str(answer.json()["access_token"])


def direct_upload(url: str, token: str, clip: Path) -> tuple[list[float], float]:
    """Upload ``clip`` by the direct path; return (the API calls' seconds, the whole upload's seconds)."""
    headers = {"Authorization": f"Bearer {token}"}
    body = {"title": "bench", "filename": clip.name, "size": clip.stat().st_size, "content_type": "video/mp4"}
    started = time.perf_counter()
    plan = requests.post(f"{url}/api/uploads", json=body, headers=headers, timeout=60)
    plan.raise_for_status()
    api = time.perf_counter() - started
    [part] = plan.json()["parts"]
    put = requests.put(part["url"], data=clip.read_bytes(), timeout=60)
    put.raise_for_status()
    parts = {"parts": [{"part_number": 1, "etag": put.headers["ETag"]}]}
    before = time.perf_counter()
    done = requests.post(
        f"{url}/api/uploads/{plan.json()['upload_id']}/complete", json=parts, headers=headers, timeout=60
    )
    done.raise_for_status()
    end = time.perf_counter()
    return [api, end - before], end - started


def api_calls(
    url: str, tokens: list[str], clip: Path, cpu: dict[str, float]
) -> list[tuple[float, Any, dict[str, float]]]:
    """Time the API's two calls alone: every client starts at once, the parts go up, every client completes at once.

    Returns each call's (seconds, answer, Server-Timing durations in ms); adds the two bursts' CPU to ``cpu``.

    (In the whole flow, the API's calls wait on S3 answers while moto, on these same CPUs, parses
    every client's part; on AWS the parts never touch them.)
    """
    body = {"title": "bench", "filename": clip.name, "size": clip.stat().st_size, "content_type": "video/mp4"}

    def start(token: str) -> tuple[float, Any, dict[str, float]]:
        began = time.perf_counter()
        plan = requests.post(f"{url}/api/uploads", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        plan.raise_for_status()
        return time.perf_counter() - began, plan.json(), timing.parse(plan.headers["Server-Timing"])

    with cpu_spent(cpu):
        started, _ = concurrent(len(tokens), lambda i: start(tokens[i]))
    data = clip.read_bytes()
    etags = [requests.put(plan["parts"][0]["url"], data=data, timeout=60).headers["ETag"] for _, plan, _ in started]

    def complete(i: int) -> tuple[float, Any, dict[str, float]]:
        plan, parts = started[i][1], {"parts": [{"part_number": 1, "etag": etags[i]}]}
        began = time.perf_counter()
        done = requests.post(
            f"{url}/api/uploads/{plan['upload_id']}/complete",
            json=parts,
            headers={"Authorization": f"Bearer {tokens[i]}"},
            timeout=60,
        )
        done.raise_for_status()
        return time.perf_counter() - began, None, timing.parse(done.headers["Server-Timing"])

    with cpu_spent(cpu):
        completed, _ = concurrent(len(tokens), complete)
    return started + completed


def form_upload(url: str, token: str, clip: Path) -> tuple[float, dict[str, Any]]:
    """Upload ``clip`` through the form route; return its seconds and the answer."""
    started = time.perf_counter()
    with clip.open("rb") as f:
        answer = requests.post(
            f"{url}/api/videos/upload",
            files={"video_file": (clip.name, f, "video/mp4")},
            data={"title": "bench"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=120,
        )
    answer.raise_for_status()
    return time.perf_counter() - started, answer.json()


def concurrent(clients: int, action: Callable[[int], Any]) -> tuple[list[Any], int]:
    """Run ``action(i)`` for every client at once; return the results and the number of errors."""
    results, errors = [], 0
    with ThreadPoolExecutor(max_workers=clients) as pool:
        for future in [pool.submit(action, i) for i in range(clients)]:
            try:
                results.append(future.result())
            except Exception as exc:
                errors += 1
                sys.stderr.write(f"\nerror: {exc!r}\n")
    return results, errors


def big_file(path: Path, size: int) -> Path:
    """Write ``size`` bytes that open like an MP4 (an ftyp box), random after it."""
    with path.open("wb") as f:
        f.write(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2")
        left = size - 24
        while left > 0:
            chunk = os.urandom(min(left, 16 * MiB))
            f.write(chunk)
            left -= len(chunk)
    return path


def measure(url: str, aws: str, work: Path, clients: int, big_mib: int) -> dict[str, Any]:
    """Run both measurements; return the numbers."""
    steps = 11
    bar(0, steps, "making the clip")
    clip = make_clip(work / "clip.mp4", 854, 480, 16, extra=("-crf", "30"))  # about 4.5 MB: one part
    tokens, _ = concurrent(clients, lambda i: login(url, f"bench-{i}@example.com"))
    for token in tokens[:8]:  # a gunicorn thread's first requests open its database and broker connections
        direct_upload(url, token, clip)
    bar(1, steps, f"{clients} direct uploads")
    flow_cpu: dict[str, float] = {}
    with cpu_spent(flow_cpu):
        direct, direct_errors = concurrent(clients, lambda i: direct_upload(url, tokens[i], clip))
    bar(2, steps, f"{clients} form uploads; the API calls alone")
    form, form_errors = concurrent(clients, lambda i: form_upload(url, tokens[i], clip))
    calls_cpu: dict[str, float] = {}
    calls = api_calls(url, tokens, clip, calls_cpu)

    bar(3, steps, f"{big_mib} MiB file")
    big = big_file(work / "big.mp4", big_mib * MiB)
    pids = gunicorn_pids()
    rss_before, peak = rss_mib(pids), [0.0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            peak[0] = max(peak[0], rss_mib(pids))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    s3, plain = (
        boto3.client(
            "s3",
            endpoint_url=aws,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(s3={"addressing_style": "path"}, signature_version="s3v4", **checksums),
        )
        for checksums in ({}, {"request_checksum_calculation": "when_required"})
    )

    def ours() -> float:
        started = time.perf_counter()
        video = uploader.upload(uploader.Api(url, tokens[0]), big, uploader.State(work / "state.json"), parallel=4)
        took = time.perf_counter() - started
        for found in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"originals/{video['video_id']}/").get("Contents", []):
            s3.delete_object(Bucket=BUCKET, Key=found["Key"])  # moto keeps objects in memory: same state each run
        return took

    def boto3_upload(client: Any) -> float:
        started = time.perf_counter()
        client.upload_file(str(big), BUCKET, "bench/boto3.bin", Config=TransferConfig(max_concurrency=4))
        took = time.perf_counter() - started
        client.delete_object(Bucket=BUCKET, Key="bench/boto3.bin")
        return took

    # boto3's default declares CRC32 checksums (per part, cheap for moto to check); a multipart upload
    # without one, as the API starts for a browser, gets S3's whole-object CRC64NVME, which moto
    # computes over a copy of the object in Python. `plain` is boto3 asking S3 for the same work.
    variants = {"ours": ours, "theirs": partial(boto3_upload, s3), "plain": partial(boto3_upload, plain)}
    runs: dict[str, list[float]] = {name: [] for name in variants}
    bar(4, steps, f"{big_mib} MiB: a first upload, not timed (moto's process grows to hold it)")
    variants["plain"]()  # whichever ran first took seconds longer, and the first two were of different kinds
    for n, name in enumerate(["theirs", "ours", "plain", "plain", "ours", "theirs"]):  # ABCCBA: no order effect
        bar(5 + n, steps, f"{big_mib} MiB: {BIG_ROWS[name]}")
        runs[name].append(variants[name]())
    stop.set()
    sampler.join()
    bar(steps, steps, "done")
    sys.stderr.write("\n")
    return {
        "clip_mb": clip.stat().st_size / 1e6,
        "api": [seconds for seconds, _, _ in calls],
        # Server-Timing: the app's time less its waits on S3 and SQS; and the time before the app had it
        "own": [(t["app"] - t["s3"] - t["sqs"]) / 1000 for _, _, t in calls],
        "aws": [(t["s3"] + t["sqs"]) / 1000 for _, _, t in calls],
        "queued": [seconds - t["app"] / 1000 for seconds, _, t in calls],
        "flow_api": [t for calls, _ in direct for t in calls],
        "flow_cpu": flow_cpu,
        "calls_cpu": calls_cpu,
        "direct": [whole for _, whole in direct],
        "direct_errors": direct_errors,
        "form": [seconds for seconds, _ in form],
        "form_errors": form_errors,
        **runs,
        "rss_before": rss_before,
        "rss_peak": peak[0],
    }


@contextmanager
def web_stack(work: Path, queue: str) -> Iterator[tuple[str, str, str]]:
    """Run moto server, a database and the web tier as deployed; yield (its URL, moto's URL, the database's kind)."""
    (work / "scratch").mkdir(exist_ok=True)
    port = free_port()
    # Its own process, as in the Procfile: in this one it would share the GIL with the clients.
    moto = [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    server = subprocess.Popen(moto, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    aws = f"http://127.0.0.1:{port}"
    wait_for(lambda: answers(f"{aws}/moto-api/"), timeout=30)
    db_url, drop = database(work)
    env = environment(work, aws) | {"DATABASE_URL": db_url, "SQS_QUEUE_NAME": queue}
    env |= {"UPLOADS_PER_ADDRESS": "1000", "LOG_LEVEL": "WARNING", "RATELIMIT_ENABLED": "false"}
    os.environ.update(env)
    try:
        app = create_app()
        with app.app_context():
            flask_migrate.upgrade(directory=str(ROOT / "migrations"))
            ensure_bucket(get_settings(app))
            ensure_queues(get_settings(app))
        with serving({}, env) as url:
            yield url, aws, "PostgreSQL" if db_url.startswith("postgresql") else "SQLite"
    finally:
        server.terminate()
        server.wait(10)
        drop()


def cpu_table(flow: dict[str, float], calls: dict[str, float], clients: int) -> list[str]:
    """Return the table of where the CPU went: per direct upload (the whole flow) and per API call (the bursts)."""
    per_upload = {kind: flow[kind] / clients * 1000 for kind in PROCESSES}
    per_call = {kind: calls[kind] / (2 * clients) * 1000 for kind in PROCESSES}  # two bursts: start, complete
    everything, every_call = sum(per_upload.values()), sum(per_call.values())

    def least(ms: float, wall: float) -> str:  # all the CPU spread on every core, against the time it took
        busy = ms * clients / 1000 / (wall * CORES)
        return f"{ms * clients / 1000 / CORES:.2f} s; took {wall:.2f} s, the CPUs {busy:.0%} busy"

    # With every CPU busy, the fastest 95% of n equal jobs on c cores end no sooner than 0.95 * n * cpu / c.
    budget_upload, budget_call = (target * CORES / (0.95 * clients) * 1000 for target in (1.0, 0.1))
    return [
        f"Where the CPU went: CPU milliseconds by process (from `/proc`), per direct upload of the {clients} at "
        "once, and per API call of the two bursts of the calls alone:",
        "",
        "| Process | per direct upload | per API call |",
        "|---|---|---|",
        *(f"| {what} | {per_upload[kind]:.1f} | {per_call[kind]:.1f} |" for kind, what in PROCESSES.items()),
        f"| all | **{everything:.1f}** | **{every_call:.1f}** |",
        f"| the least time all {clients} could take on {CORES} CPUs (all their CPU on every core) | "
        f"{least(everything, flow['wall'])} | a burst {least(every_call, calls['wall'] / 2)} |",
        "",
        f"Uploads arriving together on {CORES} CPUs end no sooner than their CPU allows: for the p95 of {clients} "
        f"uploads at once to be within 1 s, the processes together may spend {budget_upload:.0f} ms of CPU per "
        f"upload, and for the p95 of a burst of {clients} calls to be within 100 ms, {budget_call:.1f} ms per call. "
        f"Here moto server alone spends {per_upload['moto_server']:.0f} ms per upload and "
        f"{per_call['moto_server']:.1f} ms per call, before the app's {per_upload['gunicorn']:.0f} and "
        f"{per_call['gunicorn']:.1f}: on AWS the parts and S3's and SQS's work leave the machine, and the clients "
        "are elsewhere.",
    ]


def main(argv: list[str] | None = None) -> int:
    """Start the stack, measure, write the section."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--big-mib", type=int, default=1024, help="the large upload's size (default 1 GiB)")
    parser.add_argument("--quick", action="store_true", help="10 clients, 64 MiB; docs untouched")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.big_mib = 10, 64
    with tempfile.TemporaryDirectory(prefix="videoproc-bench-uploads-") as tmp:
        work = Path(tmp)
        with web_stack(work, "bench-uploads") as (url, aws, database_kind):
            r = measure(url, aws, work, args.clients, args.big_mib)
    big = args.big_mib * MiB
    ratio, default_ratio = (statistics.median(r[name]) / statistics.median(r["ours"]) for name in ("plain", "theirs"))
    lines = [
        "## Uploads through the web tier",
        "",
        f"Written by `python -m bench.uploads --clients {args.clients} --big-mib {args.big_mib}` (in `make bench`): "
        f"moto server, {database_kind}, nginx → gunicorn (2 workers x 4 threads) on {machine()}, all on loopback. "
        f"{args.clients} clients at once, "
        f"each with one {r['clip_mb']:.1f} MB clip.",
        "",
        "| What | p50 | p95 | errors |",
        "|---|---|---|---|",
        f"| direct: each API call (start, complete), all clients at once | {pct(r['api'], 0.5) * 1000:.0f} ms | "
        f"**{pct(r['api'], 0.95) * 1000:.0f} ms** | {r['direct_errors']} |",
        ms_row("of which the app's own work (Server-Timing: `app` less `s3` and `sqs`)", r["own"], bold=True),
        ms_row("of which waiting on moto (S3, SQS)", r["aws"]),
        ms_row("of which queued for a gunicorn thread, and the network (the call less `app`)", r["queued"]),
        f"| the same calls inside the whole flow (moto parsing the parts on the same CPUs) | "
        f"{pct(r['flow_api'], 0.5) * 1000:.0f} ms | {pct(r['flow_api'], 0.95) * 1000:.0f} ms | |",
        f"| direct: the whole upload (start, PUT to S3, complete) | {pct(r['direct'], 0.5):.2f} s | "
        f"**{pct(r['direct'], 0.95):.2f} s** | |",
        f"| form upload through the API (`POST /api/videos/upload`) | {pct(r['form'], 0.5):.2f} s | "
        f"{pct(r['form'], 0.95):.2f} s | {r['form_errors']} |",
        "",
        *cpu_table(r["flow_cpu"], r["calls_cpu"], args.clients),
        "",
        f"One {args.big_mib} MiB direct upload (`client.uploader`, 4 parts in flight) against boto3's `upload_file` "
        "(4 threads) to the same endpoint, interleaved, after one upload not timed (the first upload of a run took "
        "seconds longer, whichever client sent it: moto's process growing to hold the object):",
        "",
        "| What | Value |",
        "|---|---|",
        *(
            f"| {what} (2 runs) | {span(r[name])} s, {big / statistics.median(r[name]) / MiB:.0f} MiB/s |"
            for name, what in BIG_ROWS.items()
        ),
        f"| direct ÷ boto3 throughput, the same checksum (medians) | **{ratio:.2f}** |",
        f"| direct ÷ boto3 throughput, boto3's own checksums (medians) | {default_ratio:.2f} |",
        f"| web processes' memory (gunicorn, RSS) | {r['rss_before']:.0f} MiB before, {r['rss_peak']:.0f} MiB at "
        "the peak during the upload |",
        "",
        "How to read these: the bytes of a direct upload never pass through a web process (its memory does not "
        "move with a 1 GiB upload). Each answer's `Server-Timing` splits an API call: the app's own work (the "
        "target's 100 ms is for this), its waits on moto's S3 and SQS, and the rest, the time the call queued "
        "before one of gunicorn's 8 threads took it: 50 calls arriving in the same instant on 2 CPUs that also "
        "run the 50 clients, nginx, moto and the database. On AWS, S3 and SQS run elsewhere and the web group "
        "scales out; here the queue is the machine's.",
        "",
        "The two boto3 rows differ in the work they ask of S3, not in the client: boto3's default sends a CRC32 "
        "with each part, and moto checks it cheaply; a multipart upload started without a checksum (the direct "
        "upload's: a browser's presigned PUT carries none) gets S3's default whole-object CRC64NVME, which AWS "
        "derives from the parts as they arrive and moto computes at the end, in Python, over a copy of the whole "
        "object. "
        "The same-checksum row is the like-for-like comparison of the two clients.",
        "",
    ]
    if not args.quick:
        write_section("uploads", "\n".join(lines))
    print("\n".join(lines))
    print(f"median direct upload {statistics.median(r['direct']):.2f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
