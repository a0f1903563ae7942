"""The optimize stage: bytes, SSIM and CPU seconds of each rendition against the published one; publishing beside it.

Renditions: on each reference input (``bench.reference``; the profile keeps 30 s) this runs what a
worker runs. ``Pipeline.run`` with the shipped profile makes the published rendition; then
``media.quality.make_renditions`` with the shipped settings makes the H.264 one at
``OPTIMIZE_H264_PRESET`` and the AV1 one at ``OPTIMIZE_AV1_PRESET``, each at the CRF its probes
chose. SSIM is each whole rendition's content against the source (``reference.ssim``); CPU
seconds are FFmpeg's, per step.

Publishing beside it: a local stack (moto server, SQLite, a video worker at an instance's
concurrency, an optimize worker at idle priority as ``videoproc-optimize.service`` runs it). The
time from the upload's 202 to ``processed`` is measured with the optimize worker idle and while
it optimizes the previous upload, interleaved.

Writes its section of docs/benchmarks.md (unless ``--quick``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench import reference
from bench.job import CONCURRENCY, _descendants, environment, local_aws
from bench.pipeline import PROFILE, SANDBOX, bar, children_cpu, machine, spread, write_section
from config import load_settings
from domain.extensions import get_settings
from media.pipeline import Pipeline
from media.probe import probe
from media.quality import make_renditions
from ops.aws import ensure_bucket, ensure_queues
from tests.conftest import ROOT, Worker, post_upload, signup_and_login

SETTINGS = load_settings({"APP_ENV": "testing"})
WANTED = {
    "h264": replace(PROFILE, preset=SETTINGS.OPTIMIZE_H264_PRESET),
    "av1": replace(PROFILE, codec="libsvtav1", preset=str(SETTINGS.OPTIMIZE_AV1_PRESET)),
}
TARGETS = {"h264": 0.90, "av1": 0.65}  # bytes against the published rendition's, at most (the issue's)
SSIM_SLACK = 0.002  # a rendition's SSIM may be this much below the published one's, at most


def renditions(src: Path, work: Path, seconds: float) -> dict[str, dict[str, float]]:
    """Return, for the published rendition and each optimized one: bytes, SSIM, CRF and CPU seconds."""
    profile = replace(PROFILE, max_duration=min(PROFILE.max_duration, seconds))
    wanted = {name: replace(p, max_duration=profile.max_duration) for name, p in WANTED.items()}
    info = probe(str(src))
    before = children_cpu()
    published = Pipeline(profile, work / "bumpers", SANDBOX).run(str(src), info, _fresh(work / "published"))
    rows = {"published": {"bytes": published.video.stat().st_size, "crf": profile.crf, "cpu": children_cpu() - before}}
    made = make_renditions(
        str(src), info, work, profile, wanted, SANDBOX, work / "bumpers", SETTINGS.OPTIMIZE_PROBE_SECONDS
    )
    rows["window"] = {"cpu": made.window_cpu_seconds}
    for name, record in made.record.items():
        rows[name] = {
            "bytes": record["bytes"],
            "crf": record["crf"],
            "cpu": record["cpu_seconds"],
            "probe_cpu": record["probe_cpu_seconds"],
            "probe_ssim": record["ssim"],
            "target_ssim": record["target_ssim"],
        }
    for name, path in (("published", published.video), *made.files.items()):
        rows[name]["ssim"] = reference.ssim(path, src, profile, skip=profile.intro_seconds)
    return rows


def _fresh(path: Path) -> Path:
    path.mkdir(exist_ok=True)
    return path


def idle_priority(worker: Worker) -> None:
    """Put the worker's processes in SCHED_IDLE, as systemd's ``CPUSchedulingPolicy=idle`` does; FFmpeg inherits it."""
    for pid in (worker.proc.pid, *_descendants(worker.proc.pid)):
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))


def beside(work: Path, src: Path, runs: int) -> dict[str, list[float]]:
    """Return publishing times with the optimize worker idle and busy (interleaved), and its stage's wall times."""
    import flask_migrate
    from sqlalchemy import select

    from app import create_app
    from domain.extensions import db
    from domain.models import Video

    times: dict[str, list[float]] = {"idle": [], "busy": [], "optimize": []}
    with local_aws() as aws:
        env = environment(work, aws)
        os.environ.update(env)
        app = create_app()
        with app.app_context():
            flask_migrate.upgrade(directory=str(ROOT / "migrations"))
            ensure_bucket(get_settings(app))
            ensure_queues(get_settings(app))
        video = Worker(env, work / "worker.log", "bench", concurrency=CONCURRENCY)
        queue = f"{env['SQS_QUEUE_NAME']}-optimize"
        optimizer = Worker(env, work / "optimize.log", "optimize", 1, args=("-Q", queue), nice=19)
        try:
            video.wait_ready()
            optimizer.wait_ready()
            idle_priority(optimizer)
            client = app.test_client()
            headers = signup_and_login(client, "bench-optimize@example.com")

            def row(video_id: str) -> Video:
                with app.app_context():
                    found = db.session.scalar(select(Video).where(Video.id == video_id))
                    assert found is not None
                    db.session.expunge(found)
                    return found

            def publish() -> tuple[str, float]:
                answer = post_upload(client, headers, src)
                assert answer.status_code == 202, answer.json
                started, video_id = time.monotonic(), answer.json["video_id"]
                while (found := row(video_id)).status != "processed":
                    assert found.status != "failed", video.text()[-2000:]
                    time.sleep(0.05)
                return video_id, time.monotonic() - started

            for run in range(runs):
                bar(run, runs, f"run {run + 1}: publish idle, publish busy")
                first, took = publish()  # nothing optimizing: the optimize worker waits on its queue
                times["idle"].append(took)
                while row(first).optimize_status != "optimizing":
                    time.sleep(0.05)
                second, took = publish()  # the first upload's optimize stage runs meanwhile
                times["busy"].append(took)
                for video_id in (first, second):
                    while (found := row(video_id)).optimize_status != "optimized":
                        assert found.optimize_status != "failed", optimizer.text()[-2000:]
                        time.sleep(0.2)
                    assert found.processed_at is not None and found.optimized_at is not None
                    times["optimize"].append((found.optimized_at - found.processed_at).total_seconds())
            bar(runs, runs, "done")
            sys.stderr.write("\n")
        finally:
            optimizer.stop()
            video.stop()
    return times


def main(argv: list[str] | None = None) -> int:
    """Measure the renditions on every reference input, then publishing beside the stage; write the section."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="interleaved publish runs, idle and busy (default 3)")
    parser.add_argument("--inputs", nargs="*", default=list(reference.REFERENCES), help="reference inputs")
    parser.add_argument("--stack-seconds", type=float, default=10.0, help="of the 1080p input, published (10)")
    parser.add_argument("--quick", action="store_true", help="8 s of the 1080p input, one run; docs untouched")
    args = parser.parse_args(argv)
    seconds = 8.0 if args.quick else PROFILE.max_duration
    inputs = ["1080p landscape"] if args.quick else args.inputs
    table: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="videoproc-bench-optimize-") as tmp:
        work = Path(tmp)
        for n, name in enumerate(inputs):
            bar(n, len(inputs), f"{name}: renditions")
            src = reference.reference(name, None if not args.quick else seconds)
            table[name] = renditions(src, _fresh(work / f"input-{n}"), seconds)
        bar(len(inputs), len(inputs), "renditions done")
        sys.stderr.write("\n")
        (work / "scratch").mkdir()
        stack_seconds = 8.0 if args.quick else args.stack_seconds
        stack = beside(work, reference.reference("1080p landscape", stack_seconds), 1 if args.quick else args.runs)
    stack["seconds"] = [stack_seconds]
    text = section(table, stack, seconds)
    if not args.quick:
        write_section("optimize", text)
    print(text)
    return 0


def section(
    table: dict[str, dict[str, dict[str, float]]],
    stack: dict[str, list[float]],
    seconds: float,
) -> str:
    """Return the docs/benchmarks.md section for these measurements."""
    lines = [
        "## The optimize stage: smaller renditions at the published one's quality",
        "",
        f"Written by `python -m bench.optimize` (in `make bench`) on {machine()}. Each reference input, "
        f"{seconds:g} s kept, is published with the shipped profile, then optimized as a worker does "
        f"(`media.quality.make_renditions`: H.264 `{SETTINGS.OPTIMIZE_H264_PRESET}`, SVT-AV1 preset "
        f"{SETTINGS.OPTIMIZE_AV1_PRESET}, each at the highest CRF whose SSIM on "
        f"{SETTINGS.OPTIMIZE_PROBE_SECONDS:g} s of the clip reaches the published rendition's). "
        "SSIM: each whole rendition's content against the source in the same frame and watermark "
        "(`bench.reference.ssim`). CPU seconds: FFmpeg's. "
        f"Targets: H.264 ≤ {TARGETS['h264']:.2f}x the published bytes, AV1 ≤ {TARGETS['av1']:.2f}x, "
        f"each at an SSIM at most {SSIM_SLACK} below the published one's.",
        "",
        "| Input | Rendition | CRF | Bytes | vs published | SSIM | vs published | CPU-s: probes + encode |",
        "|---|---|---|---|---|---|---|---|",
    ]
    totals: dict[str, list[float]] = {}
    for name, rows in table.items():
        base = rows["published"]
        for rendition in ("published", "h264", "av1"):
            row = rows[rendition]
            if "ssim" not in row:  # media.quality.worth: its probes missed the target, so it was not encoded
                lines.append(f"| {name} | {rendition} | {row['crf']:g} | not encoded: its probes missed | (missed) |")
                continue
            ratio = row["bytes"] / base["bytes"]
            delta = row["ssim"] - base["ssim"]
            met = rendition == "published" or (ratio <= TARGETS[rendition] and delta >= -SSIM_SLACK)
            cpu = f"{row['cpu']:.1f}" if rendition == "published" else f"{row['probe_cpu']:.1f} + {row['cpu']:.1f}"
            lines.append(
                f"| {name} | {rendition} | {row['crf']:g} | {row['bytes'] / 1e6:.2f} MB | "
                f"{'1' if rendition == 'published' else f'**{ratio:.2f}x**'}{'' if met else ' (missed)'} | "
                f"{row['ssim']:.4f} | {'' if rendition == 'published' else f'{delta:+.4f}'} | {cpu} |"
            )
            totals.setdefault(f"{rendition}-bytes", []).append(ratio)
        stage = rows["window"]["cpu"] + sum(rows[r]["probe_cpu"] + rows[r]["cpu"] for r in ("h264", "av1"))
        totals.setdefault("stage-cpu", []).append(stage / base["cpu"])
        lines.append(
            f"| {name} | the stage's CPU (window {rows['window']['cpu']:.1f} s, probes, encodes) | | | | | | "
            f"{stage:.1f} s: **{stage / base['cpu']:.1f}x** publishing's {base['cpu']:.1f} s |"
        )
    idle, busy = statistics.median(stack["idle"]), statistics.median(stack["busy"])
    lines += [
        "",
        f"Publishing beside it: {stack['seconds'][0]:g} s of the 1080p input uploaded through the API to a video "
        "worker at an instance's "
        f"concurrency ({CONCURRENCY}), with an optimize worker on the same cores (SCHED_IDLE and nice 19, as "
        "`videoproc-optimize.service`; its FFmpeg stopped while a processing job runs); "
        f"{len(stack['idle'])} interleaved runs, medians (min to max). Target: ≤ 1.10x.",
        "",
        "| What | Time | Ratio |",
        "|---|---|---|",
        f"| upload's 202 → `processed`, the optimize worker idle | {spread(stack['idle'])} | 1 |",
        f"| the same while it optimizes the previous upload | {spread(stack['busy'])} | **{busy / idle:.2f}x** |",
        f"| `processed` → `optimized`, at idle priority | {spread(stack['optimize'])} | |",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
