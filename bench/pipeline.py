"""Measure the pipeline side by side and write docs/benchmarks.md.

Compares, in one run on the same clips: the pipeline as shipped (bumpers rendered once
per worker, the clip encoded once, pieces joined by stream copy, FFmpeg in its sandbox)
against rendering the bumpers again for every video, and against the same pipeline with
the sandbox taken off (no input options, no resource limits). Reports medians and ratios,
not absolute promises: the machines are shared and noisy.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from config import load_settings
from config.settings import ASSETS_DIR, ROOT
from media.pipeline import Pipeline
from media.probe import probe
from media.profile import Profile
from media.sandbox import Limits, Sandbox
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


class Unsandboxed(Sandbox):
    """FFmpeg as it was before the sandbox: any demuxer, any protocol, no limits."""

    def input_options(self, container: str | None = None) -> dict[str, object]:
        return {}

    def encode_limits(self, content_seconds: float) -> Limits:
        return Limits()


SANDBOX = Sandbox.from_settings(load_settings({"APP_ENV": "testing"}))


def machine() -> str:
    """Return the CPU model and count, for the tables' captions."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} x {model}"


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
        steps, step = len(CLIPS) * RUNS * 3 + len(CLIPS), 0
        clips = {}
        for name, (w, h, seconds) in CLIPS.items():
            bar(step, steps, f"making {name}")
            clips[name] = make_clip(work / f"{w}x{h}.mp4", w, h, seconds)
            step += 1
        cached = Pipeline(PROFILE, work / "bumpers", SANDBOX)
        cached.bumpers()  # a worker renders them once, before its first video
        open_ = Pipeline(PROFILE, work / "bumpers", Unsandboxed())
        for name, src in clips.items():
            info = probe(str(src))
            times: dict[str, list[float]] = {"cached": [], "fresh": [], "open": []}
            for run in range(RUNS):  # interleaved, so every variant sees the same machine load
                for variant in times:
                    bar(step, steps, f"{variant} {name}")
                    job = work / f"{variant}-{run}-{len(rows)}"
                    job.mkdir()
                    pipeline = {"cached": cached, "open": open_}.get(variant) or Pipeline(
                        PROFILE, job / "bumpers", SANDBOX
                    )
                    times[variant].append(timed(lambda p=pipeline, j=job, s=src, i=info: p.run(s, i, j)))
                    step += 1
            output = min(info.duration, PROFILE.max_duration) + PROFILE.intro_seconds + PROFILE.outro_seconds
            a, b, c = (statistics.median(times[v]) for v in ("cached", "fresh", "open"))
            rows.append((name, output, a, b, c))
        bar(steps, steps, "done")
        sys.stderr.write("\n")

    lines = [
        "## The pipeline",
        "",
        "Written by `make bench` (`python -m bench.pipeline`). Medians of "
        f"{RUNS} interleaved runs on {platform.machine()}, {platform.python_version()}; "
        f"profile: {PROFILE.width}x{PROFILE.height}@{PROFILE.fps}, CRF {PROFILE.crf}, preset {PROFILE.preset}, "
        f"{PROFILE.intro_seconds:g}+{PROFILE.outro_seconds:g} s bumpers, watermark.",
        "",
        "*Shipped*: bumpers rendered once per worker, the clip encoded once, pieces joined by stream copy, "
        f"FFmpeg in its sandbox ({SANDBOX.threads} decoder threads). "
        "*Bumpers per video*: the same, but rendering both bumpers again for every video. "
        "*No sandbox*: the shipped pipeline without the sandbox's input options and resource limits; "
        "*sandbox cost* is shipped ÷ no sandbox (the target is at most 1.03). "
        "Speed is output seconds per wall-clock second.",
        "",
        "| Input | Output s | Shipped s | Bumpers per video s | Ratio | No sandbox s | Sandbox cost | Shipped speed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, output, a, b, c in rows:
        lines.append(
            f"| {name} | {output:.0f} | {a:.2f} | {b:.2f} | {b / a:.2f}x | {c:.2f} | {a / c:.3f} "
            f"| {output / a:.1f}x realtime |"
        )
    lines += ["", "Absolute times depend on the machine and its load; compare the ratios.", ""]
    write_section("pipeline", "\n".join(lines))
    print("\n".join(lines))
    return 0


def write_section(name: str, text: str, target: Path = ROOT / "docs" / "benchmarks.md") -> None:
    """Replace section ``name`` of docs/benchmarks.md (appended when new); leave the others as they are."""
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    page = target.read_text() if target.exists() else "# Benchmarks\n\n"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in page and end in page:
        head, rest = page.split(begin, 1)
        page = head + block + rest.split(end, 1)[1]
    else:
        page = page.rstrip() + "\n\n" + block + "\n"
    target.write_text(page)


if __name__ == "__main__":
    sys.exit(main())
