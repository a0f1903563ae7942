"""The API under load, with locust against the web tier as deployed (nginx → gunicorn).

Starts moto server, a database and the web tier (``bench.uploads.web_stack``), signs up the
users, then runs ``bench/locustfile.py`` headless, one scenario after the other:

1. ``--users`` clients uploading a 4.5 MB clip one after another for ``--seconds``, by the
   direct path (start, PUT to S3, complete);
2. the same by the form upload;
3. status polling at ``--rate`` requests per second (``GET /api/videos/{id}``).

Reads locust's CSV statistics; writes its section of docs/benchmarks.md (unless ``--quick``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.pipeline import bar, machine, write_section
from bench.uploads import form_upload, login, web_stack
from tests.clips import make_clip

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def run_locust(
    work: Path, url: str, user: str, users: int, seconds: int, env: dict[str, str]
) -> dict[str, dict[str, float]]:
    """Run locust's ``user`` class headless; return its statistics per request name."""
    prefix = work / user
    argv = [str(Path(sys.executable).parent / "locust"), "-f", str(LOCUSTFILE), user, "--headless"]
    argv += ["-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--host", url, "--csv", str(prefix)]
    argv += ["--only-summary", "--loglevel", "WARNING", "--stop-timeout", "30"]
    subprocess.run(argv, env=os.environ | env, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(f"{prefix}_stats.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {row["Name"]: row_numbers(row) for row in rows}


def row_numbers(row: dict[str, str]) -> dict[str, float]:
    """Return a locust statistics row's counts, rate and percentiles (milliseconds) as numbers."""
    keys = ("Request Count", "Failure Count", "Requests/s", "50%", "95%", "99%", "Max Response Time")
    return {key: float(row[key] or 0) if row[key] != "N/A" else 0.0 for key in keys}


def poll_seconds(args: argparse.Namespace) -> int:
    """Return how long the status polling runs: a third of an upload scenario, at least 5 s."""
    return max(5, args.seconds // 3)


def main(argv: list[str] | None = None) -> int:
    """Run the three scenarios; write the section."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=50, help="concurrent uploading clients (default 50)")
    parser.add_argument("--seconds", type=int, default=60, help="each upload scenario's length (default 60)")
    parser.add_argument("--rate", type=int, default=200, help="status requests per second (default 200)")
    parser.add_argument(
        "--quick", action="store_true", help="10 users, 5 s each, 50 status reads a second; docs untouched"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.users, args.seconds, args.rate = 10, 5, 50
    pollers = max(1, args.rate // 10)
    results = {}
    with tempfile.TemporaryDirectory(prefix="videoproc-bench-load-") as tmp:
        work = Path(tmp)
        clip = make_clip(work / "clip.mp4", 854, 480, 16, extra=("-crf", "30"))  # about 4.5 MB: one part
        with web_stack(work, "bench-load") as (url, _aws, database_kind):
            accounts = []
            for n in range(max(args.users, pollers)):
                token = login(url, f"load-{n}@example.com")
                # The pollers (each scenario's users take the accounts from the first) read a video of their own.
                video_id = form_upload(url, token, clip)[1]["video_id"] if n < pollers else ""
                accounts.append({"token": token, "video_id": video_id})
            (work / "accounts.json").write_text(json.dumps(accounts))
            env = {"BENCH_ACCOUNTS": str(work / "accounts.json"), "BENCH_CLIP": str(clip)}
            scenarios = [
                ("DirectUploader", args.users, args.seconds),
                ("FormUploader", args.users, args.seconds),
                ("StatusPoller", pollers, poll_seconds(args)),
            ]
            for n, (user, users, seconds) in enumerate(scenarios):
                bar(n, len(scenarios), f"{user}: {users} users, {seconds} s")
                results[user] = run_locust(work, url, user, users, seconds, env)
            bar(len(scenarios), len(scenarios), "done")
            sys.stderr.write("\n")
        mb = clip.stat().st_size / 1e6
    text = report(results, args, pollers, database_kind, mb)
    if not args.quick:
        write_section("load", text)
    print(text)
    return 0


def report(
    results: dict[str, dict[str, dict[str, float]]], args: argparse.Namespace, pollers: int, kind: str, mb: float
) -> str:
    """Return the section's Markdown."""
    lines = [
        "## The API under load (locust)",
        "",
        f"Written by `python -m bench.load --users {args.users} --seconds {args.seconds} --rate {args.rate}` "
        f"(in `make bench`) on {machine()}: locust (`bench/locustfile.py`) against nginx → gunicorn (2 workers x "
        f"4 threads), moto server and {kind}, all on these CPUs. {args.users} users each uploading a {mb:.1f} MB "
        f"clip again and again for {args.seconds} s, by each path; then {pollers} users polling a video's status "
        f"ten times a second each for {poll_seconds(args)} s. Each upload is deleted after it is timed "
        "(moto keeps objects in memory).",
        "",
        "| Scenario | Request | Requests | Per second | p50 ms | p95 ms | Failures |",
        "|---|---|---|---|---|---|---|",
    ]
    names = {
        "DirectUploader": ("direct upload", "POST /api/uploads", "PUT part (S3)", "POST /api/uploads/{id}/complete"),
        "FormUploader": ("form upload", "POST /api/videos/upload"),
        "StatusPoller": ("GET /api/videos/{id}",),
    }
    for user, wanted in names.items():
        for name in wanted:
            row = results[user].get(name)
            if not row:
                continue
            whole = " (the whole upload)" if name in ("direct upload", "form upload") else ""
            lines.append(
                f"| {user} | {name}{whole} | {row['Request Count']:.0f} | {row['Requests/s']:.1f} | "
                f"{row['50%']:.0f} | **{row['95%']:.0f}** | {row['Failure Count']:.0f} |"
            )
    lines += [
        "",
        "Targets: status p95 ≤ 50 ms at 200 requests per second; uploads without errors. The load tool, the web "
        "tier, moto (S3 and SQS) and the database share the 2 CPUs; on AWS the parts go to S3, not here.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
