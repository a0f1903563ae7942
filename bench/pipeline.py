"""Measure the pipeline side by side and write docs/benchmarks.md.

Compares, in one run on the same clips: the pipeline as shipped (bumpers rendered once
per worker, the clip encoded once, pieces joined by stream copy) against rendering the
bumpers again for every video. Reports medians and ratios, not absolute promises: the
machines are shared and noisy.
"""

from __future__ import annotations

import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from config.settings import ASSETS_DIR, ROOT
from media.pipeline import Pipeline
from media.probe import probe
from media.profile import Profile
from tests.clips import make_clip

RUNS = 3
CLIPS = {
    "1080x1920 portrait, 35 s": (1080, 1920, 35),
    "1920x1080, 20 s": (1920, 1080, 20),
    "640x480, 10 s": (640, 480, 10),
}
PROFILE = Profile(
    intro_image=str(ASSETS_DIR / "intro.png"),
    outro_image=str(ASSETS_DIR / "outro.png"),
    watermark_image=str(ASSETS_DIR / "logo.png"),
)


def bar(done: int, total: int, label: str) -> None:
    """Draw a progress bar on stderr."""
    width = 30
    filled = int(width * done / total)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label[:40]:<40}")
    sys.stderr.flush()


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main() -> int:
    """Run every variant on every clip ``RUNS`` times, interleaved, and write the table."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="videoproc-bench-") as tmp:
        work = Path(tmp)
        steps, step = len(CLIPS) * RUNS * 2 + len(CLIPS), 0
        clips = {}
        for name, (w, h, seconds) in CLIPS.items():
            bar(step, steps, f"making {name}")
            clips[name] = make_clip(work / f"{w}x{h}.mp4", w, h, seconds)
            step += 1
        cached = Pipeline(PROFILE, work / "bumpers")
        cached.bumpers()  # a worker renders them once, before its first video
        for name, src in clips.items():
            info = probe(str(src))
            times: dict[str, list[float]] = {"cached": [], "fresh": []}
            for run in range(RUNS):  # interleaved, so both variants see the same machine load
                for variant in ("cached", "fresh"):
                    bar(step, steps, f"{variant} {name}")
                    job = work / f"{variant}-{run}-{len(rows)}"
                    job.mkdir()
                    pipeline = cached if variant == "cached" else Pipeline(PROFILE, job / "bumpers")
                    times[variant].append(timed(lambda p=pipeline, j=job, s=src, i=info: p.run(s, i, j)))
                    step += 1
            output = min(info.duration, PROFILE.max_duration) + PROFILE.intro_seconds + PROFILE.outro_seconds
            a, b = statistics.median(times["cached"]), statistics.median(times["fresh"])
            rows.append((name, output, a, b))
        bar(steps, steps, "done")
        sys.stderr.write("\n")

    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench.pipeline`). Medians of "
        f"{RUNS} interleaved runs on {platform.machine()}, {platform.python_version()}; "
        f"profile: {PROFILE.width}x{PROFILE.height}@{PROFILE.fps}, CRF {PROFILE.crf}, preset {PROFILE.preset}, "
        f"{PROFILE.intro_seconds:g}+{PROFILE.outro_seconds:g} s bumpers, watermark.",
        "",
        "*Shipped*: bumpers rendered once per worker, the clip encoded once, pieces joined by stream copy. "
        "*Bumpers per video*: the same, but rendering both bumpers again for every video. "
        "Speed is output seconds per wall-clock second.",
        "",
        "| Input | Output s | Shipped s | Bumpers per video s | Ratio | Shipped speed |",
        "|---|---|---|---|---|---|",
    ]
    for name, output, a, b in rows:
        lines.append(f"| {name} | {output:.0f} | {a:.2f} | {b:.2f} | {b / a:.2f}x | {output / a:.1f}x realtime |")
    lines += ["", "Absolute times depend on the machine and its load; compare the ratios.", ""]
    target = ROOT / "docs" / "benchmarks.md"
    target.parent.mkdir(exist_ok=True)
    target.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
