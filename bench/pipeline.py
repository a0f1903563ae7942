"""Measure the pipeline against FFmpeg's floor and against the naive pipeline; write docs/benchmarks.md.

On the reference inputs (``bench.reference``: textured, moving, grainy footage made with FFmpeg),
side by side in one run, interleaved: the floor (one FFmpeg command from the local file to the
same frames, watermark, preset and CRF); the shipped job's encoding part (probe, then
``Pipeline.run`` with the bumpers cached: the sandbox, the encode, the stream-copy join with the
bumpers, the poster); and the naive pipeline (x264's defaults, bumpers per video, a re-encoding
concat with the watermark), at quality measured with FFmpeg's ``ssim`` for each. Then a sweep
of x264 presets and CRFs on the 1080p input: speed, quality and size, to choose the profile's.
Medians with min-max, and ratios measured side by side: the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import reference as ref
from config import load_settings
from config.settings import ASSETS_DIR, ROOT
from domain import media
from media.pipeline import Pipeline
from media.probe import probe
from media.profile import Profile

PROFILE = Profile(
    intro_image=str(ASSETS_DIR / "intro.png"),
    outro_image=str(ASSETS_DIR / "outro.png"),
    watermark_image=str(ASSETS_DIR / "logo.png"),
)
SANDBOX = media.confinement(load_settings({"APP_ENV": "testing"}))
# The settings tried on the first SWEEP_SECONDS of the 1080p input: (preset, CRF).
SWEEP = [
    ("ultrafast", 23),
    ("superfast", 23),
    ("veryfast", 23),
    ("faster", 23),
    ("medium", 23),
    ("veryfast", 22),
    ("veryfast", 21),
    ("superfast", 21),  # what a faster preset costs in bits at the naive pipeline's quality
]
SWEEP_SECONDS = 6.0
QUICK_SECONDS = 4.0  # --quick: this much of the 1080p input, for the comparison and the sweep


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
    filled = int(width * done / max(total, 1))
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label[:40]:<40}")
    sys.stderr.flush()


def timed(action: Callable[[], object]) -> float:
    """Return the wall-clock seconds ``action`` took."""
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def spread(values: Sequence[float], unit: str = "s", digits: int = 1) -> str:
    """Return ``median unit (min-max)``: how every number of several runs is shown."""
    median = statistics.median(values)
    if len(values) < 2:
        return f"{median:.{digits}f} {unit} (one run)"
    return f"{median:.{digits}f} {unit} ({min(values):.{digits}f} to {max(values):.{digits}f})"


def children_cpu() -> float:
    """Return the CPU seconds used so far by this process's finished children (every FFmpeg it waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Runs:
    """Wall-clock times per variant, measured interleaved so every variant sees the same machine load.

    Also the CPU seconds of the FFmpeg children each run waited for: the worker's cost, and a
    steadier number than wall time on a shared host (it does not count time spent waiting for a CPU).
    """

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}

    def time(self, variant: str, action: Callable[[], object]) -> None:
        before = children_cpu()
        self.times.setdefault(variant, []).append(timed(action))
        self.cpu.setdefault(variant, []).append(children_cpu() - before)

    def median(self, variant: str) -> float:
        return statistics.median(self.times[variant])

    def ratio(self, a: str, b: str) -> float:
        """Return ``a``'s median over ``b``'s."""
        return self.median(a) / self.median(b)

    def cpu_ratio(self, a: str, b: str) -> float:
        """Return ``a``'s median CPU seconds over ``b``'s."""
        return statistics.median(self.cpu[a]) / statistics.median(self.cpu[b])


def compare(
    name: str, src: Path, work: Path, runs: int, naive_runs: int, bumpers: Path, unjailed: bool = False
) -> tuple[Runs, dict[str, float]]:
    """Time the floor, the shipped pipeline and (``naive_runs`` times) the naive one on ``src``; their SSIM.

    ``unjailed``: also the shipped pipeline with ``MEDIA_JAIL`` off, interleaved, for the jail's cost.
    """
    pipeline = Pipeline(PROFILE, bumpers, SANDBOX)
    bare = Pipeline(PROFILE, bumpers, dataclasses.replace(SANDBOX, jail=False))
    result, quality = Runs(), {}
    for run in range(runs):
        (job := work / f"{name}-{run}").mkdir(parents=True)
        result.time("floor", lambda: ref.floor(src, job / "floor.mp4", PROFILE))
        result.time("shipped", lambda: pipeline.run(src, probe(str(src)), job))
        if unjailed:
            (bare_job := work / f"{name}-{run}-unjailed").mkdir()
            result.time("unjailed", lambda: bare.run(src, probe(str(src)), bare_job))
        if run < naive_runs:
            result.time("naive", lambda: ref.naive(src, job, PROFILE))
    if naive_runs:  # the outputs of every run are the same frames: score the last of each
        quality["floor"] = ref.ssim(job / "floor.mp4", src, PROFILE)
        quality["shipped"] = ref.ssim(job / "video.mp4", src, PROFILE, skip=PROFILE.intro_seconds)
        quality["naive"] = ref.ssim(work / f"{name}-0" / "naive.mp4", src, PROFILE, skip=PROFILE.intro_seconds)
    return result, quality


def sweep(
    src: Path, work: Path, seconds: float, settings: list[tuple[str, int]]
) -> list[tuple[str, int, float, float, float]]:
    """Return (preset, CRF, speed as x realtime, SSIM, kbit/s) for each of ``settings`` on ``seconds`` of ``src``."""
    short = dataclasses.replace(PROFILE, max_duration=seconds)
    rows = []
    for preset, crf in settings:
        out = work / f"sweep-{preset}-{crf}.mp4"

        def encode(o: Path = out, p: str = preset, c: int = crf) -> None:
            ref.floor(src, o, short, p, c)

        took = timed(encode)
        kbits = out.stat().st_size * 8 / 1000 / seconds
        rows.append((preset, crf, seconds / took, ref.ssim(out, src, short), kbits))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Compare the variants on every reference input and sweep the settings; write the section."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs of the floor and the pipeline")
    parser.add_argument("--quick", action="store_true", help="10 s of the 1080p input, one run; docs untouched")
    args = parser.parse_args(argv)
    inputs: dict[str, tuple[float | None, bool]] = {
        name: (None, True) for name in ref.REFERENCES
    }  # name: (seconds, naive and SSIM on it)
    inputs["1080x1920 portrait"] = inputs["4K at 60 fps"] = (None, False)
    if args.quick:
        args.runs, inputs = 1, {"1080p landscape": (QUICK_SECONDS, True)}
    if footage := os.environ.get("BENCH_FOOTAGE"):
        inputs[f"your footage ({Path(footage).name})"] = (None, True)
    steps = len(inputs) + 1
    results = {}
    with tempfile.TemporaryDirectory(prefix="videoproc-bench-") as tmp:
        work = Path(tmp)
        Pipeline(PROFILE, work / "bumpers", SANDBOX).bumpers()  # a worker renders them before its first video
        for step, (name, (seconds, judged)) in enumerate(inputs.items()):
            bar(step, steps, f"{name}: making it" if name in ref.REFERENCES else name)
            src = ref.reference(name, seconds) if name in ref.REFERENCES else Path(footage or "")
            bar(step, steps, name)
            naive_runs = 1 if judged else 0  # 4 to 5 times the others: once, for time
            runs = args.runs if judged else 1  # the other inputs: one run each, for time
            jail_cost = name == "1080p landscape"
            results[name] = compare(name.split()[0], src, work, runs, naive_runs, work / "bumpers", jail_cost)
        bar(len(inputs), steps, "presets and CRFs")
        seconds = QUICK_SECONDS if args.quick else SWEEP_SECONDS
        settings = [(PROFILE.preset, PROFILE.crf)] if args.quick else SWEEP
        swept = sweep(ref.reference("1080p landscape", seconds), work, seconds, settings)
        bar(steps, steps, "done")
        sys.stderr.write("\n")
    text = report(results, swept, args.runs, seconds)
    if not args.quick:
        write_section("pipeline", text)
    print(text)
    return 0


def report(
    results: dict[str, tuple[Runs, dict[str, float]]],
    swept: list[tuple[str, int, float, float, float]],
    runs: int,
    seconds: float,
) -> str:
    """Return the section's Markdown."""
    p = PROFILE
    lines = [
        "## The pipeline against FFmpeg's floor and the naive pipeline",
        "",
        f"Written by `make bench` (`python -m bench.pipeline`) on {machine()}. Medians of {runs} interleaved runs "
        "on the 1080p input, one on the others (min to max in brackets); the naive pipeline once. "
        "Inputs: 45 s reference clips made by "
        "`bench/reference.py` (a textured still under a moving camera, a moving test card, sensor grain on every "
        f"frame, audio). Output profile: {p.width}x{p.height}@{p.fps}, {p.max_duration:g} s kept, x264 "
        f"`{p.preset}` CRF {p.crf}, {p.intro_seconds:g}+{p.outro_seconds:g} s bumpers, watermark.",
        "",
        "*Floor*: one FFmpeg command from the local file to the same frames, watermark, preset and CRF, FFmpeg's "
        "own thread defaults, no bumpers, no poster. *Shipped*: probe, then `Pipeline.run` with the bumpers cached "
        f"(sandboxed FFmpeg, {SANDBOX.threads} threads; the join with the bumpers by stream copy; the poster). "
        f"*Naive*: the clip trimmed and fitted at x264's defaults (`{ref.NAIVE[0]}`, CRF {ref.NAIVE[1]}), both "
        "bumpers rendered for the video, a re-encoding "
        "concat that adds the watermark, the poster. SSIM (all planes) of the content against the source fitted "
        "to the same frame with the same watermark, by FFmpeg's `ssim` filter. *CPU-s*: the CPU seconds of the "
        "FFmpeg processes, the worker's cost, steadier than wall time on a shared host. Targets: shipped ≤ 1.03x "
        "the floor; naive ≥ 5x the shipped at equal or better SSIM.",
        "",
        "| Input | Floor | Shipped | **Shipped ÷ floor** | CPU-s shipped ÷ floor | Naive | **Naive ÷ shipped** "
        "| SSIM floor / shipped / naive |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, (r, quality) in results.items():
        naive = (
            (spread(r.times["naive"]), f"**{r.ratio('naive', 'shipped'):.1f}x**") if "naive" in r.times else ("", "")
        )
        scores = " / ".join(f"{quality[v]:.4f}" for v in ("floor", "shipped", "naive")) if quality else ""
        lines.append(
            f"| {name} | {spread(r.times['floor'])} | {spread(r.times['shipped'])} | "
            f"**{r.ratio('shipped', 'floor'):.3f}** | {r.cpu_ratio('shipped', 'floor'):.3f} | {naive[0]} | {naive[1]} "
            f"| {scores} |"
        )
    for name, (r, _quality) in results.items():
        if "unjailed" in r.times:
            lines += [
                "",
                f"**The jail's cost** (`media/jail.py`: every FFmpeg in bubblewrap), on the {name} input, medians "
                f"of {len(r.times['unjailed'])} interleaved runs: shipped jailed ÷ unjailed "
                f"**{r.ratio('shipped', 'unjailed'):.3f}** in wall time ({spread(r.times['shipped'])} against "
                f"{spread(r.times['unjailed'])}), {r.cpu_ratio('shipped', 'unjailed'):.3f} in CPU seconds. "
                "Target: within 1.03.",
            ]
    lines += [
        "",
        f"### Preset and CRF, measured on the first {seconds:g} s of the 1080p input",
        "",
        "One FFmpeg command each (the floor's), one run each, side by side. Speed is content seconds per second.",
        "",
        "| Preset | CRF | Speed | SSIM | kbit/s |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {preset} | {crf} | {speed:.2f}x | {score:.4f} | {kbits:.0f} |" for preset, crf, speed, score, kbits in swept
    ]
    lines += ["", choice(swept), ""]
    return "\n".join(lines)


def choice(swept: list[tuple[str, int, float, float, float]]) -> str:
    """Say what the sweep shows about the profile's preset and CRF."""
    by = {(preset, crf): (speed, score, kbits) for preset, crf, speed, score, kbits in swept}
    mine = by.get((PROFILE.preset, PROFILE.crf))
    if not mine:
        return ""
    parts = []
    for other in (ref.NAIVE, ("veryfast", 23), ("superfast", 21), ("ultrafast", 23)):
        if other in by and other != (PROFILE.preset, PROFILE.crf):
            speed, score, kbits = by[other]
            parts.append(
                f"`{other[0]}` CRF {other[1]} runs at {speed / mine[0]:.2f}x its speed with SSIM "
                f"{score - mine[1]:+.4f} and {kbits / mine[2]:.2f}x its bitrate"
            )
    return (
        f"The profile ships `{PROFILE.preset}` CRF {PROFILE.crf} (`OUTPUT_PRESET`, `OUTPUT_CRF`). Next to it, "
        + "; ".join(parts)
        + ". Worker CPU time is the product's cost, and a delivery bitrate is what the viewer's network pays."
    )


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
