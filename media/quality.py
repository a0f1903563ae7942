"""Match a rendition's quality to the fast one's: SSIM on a window of the clip, and the CRF that keeps it.

The optimize stage encodes a slower preset (x264) or another codec (AV1) at the highest CRF
whose SSIM against the source frames is at least what the published rendition got on the
same frames. It measures, on a few seconds of the clip itself, rather than assuming a table:
grain, motion and detail move the CRF a codec can afford by many steps.
"""

from __future__ import annotations

import resource
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from media import commands, runner
from media.pipeline import Pipeline, plain_file
from media.probe import MediaInfo
from media.profile import Profile
from media.sandbox import Sandbox, is_relay


@dataclass(frozen=True)
class Choice:
    """The CRF chosen for a rendition, its SSIM on the window, the SSIM it had to reach, and the probes it took."""

    crf: int
    ssim: float
    target: float
    probes: int


MAX_PROBES = 3
SSIM_TOLERANCE = 0.002  # how far below the published rendition's SSIM a new one may land and still serve
WINDOWS = 4  # pieces of the clip in the probes' reference


def _next(seen: dict[int, float], target: float, low: int, high: int, step: int) -> int | None:
    """Return the next CRF to try, or None when the answer is known: the highest that reaches ``target``."""
    good = [crf for crf, ssim in seen.items() if ssim >= target]
    best = max(good, default=None)
    above = [crf for crf, ssim in seen.items() if ssim < target and (best is None or crf > best)]
    worst = min(above, default=None)
    if best is None:  # every probe missed: go down
        assert worst is not None
        return None if worst == low else max(low, worst - step)
    if worst is None:  # every probe reached it: go up
        return None if best == high else min(high, best + step)
    if worst - best == 1:
        return None
    # Between the highest that reached it and the lowest above it that missed: SSIM is near linear in CRF here.
    lo_ssim, hi_ssim = seen[best], seen[worst]
    estimate = best + (lo_ssim - target) / max(lo_ssim - hi_ssim, 1e-9) * (worst - best)
    return min(max(int(estimate), best + 1), worst - 1)


def choose_crf(
    measure: Callable[[int], float], target: float, low: int, high: int, guess: int, step: int = 4
) -> Choice:
    """Return the highest CRF in ``low``..``high`` whose ``measure`` is at least ``target`` (SSIM falls as CRF rises).

    From ``guess``, steps of ``step`` until the target is crossed, then linear interpolation between
    the two CRFs around it: at most ``MAX_PROBES`` measures. When none reaches the target, the lowest
    CRF measured is returned with its SSIM (the caller sees it below ``target``).
    """
    seen: dict[int, float] = {}
    crf: int | None = min(max(guess, low), high)
    while crf is not None and len(seen) < MAX_PROBES:
        seen[crf] = measure(crf)
        crf = _next(seen, target, low, high, step)
    good = [crf for crf, ssim in seen.items() if ssim >= target]
    chosen = max(good) if good else min(seen)
    return Choice(crf=chosen, ssim=seen[chosen], target=target, probes=len(seen))


def mean_ssim(stats: Path) -> float:
    """Return the mean of the per-frame ``All`` SSIM that FFmpeg's ``ssim`` filter wrote to ``stats``."""
    values = [float(part[4:]) for line in stats.read_text().splitlines() for part in line.split() if part[:4] == "All:"]
    if not values:
        raise runner.FFmpegError([str(stats)], 0, "the ssim filter compared no frames", None)
    return sum(values) / len(values)


class Window:
    """A few seconds of the clip's frames, kept losslessly, to measure encodes of it against."""

    def __init__(self, reference: Path, sandbox: Sandbox, seconds: float) -> None:
        self.reference, self.sandbox, self.seconds = reference, sandbox, seconds
        self.workdir = reference.parent

    def ssim(self, profile: Profile) -> float:
        """Encode the window with ``profile`` and return its SSIM against the window's frames."""
        name = f"{profile.codec}-{profile.preset}-{profile.crf}"
        encoded, stats = self.workdir / f"{name}.mp4", self.workdir / f"{name}.ssim"
        limits, jail = self.sandbox.encode_limits(self.seconds), self.sandbox.confine(self.workdir)
        argv = commands.sample_command(
            str(self.reference), str(encoded), profile, self.sandbox.output_options(profile.codec)
        )
        runner.run(argv, limits=limits, jail=jail)
        runner.run(
            commands.ssim_command(str(plain_file(encoded)), str(self.reference), str(stats)), limits=limits, jail=jail
        )
        ssim = mean_ssim(plain_file(stats))
        encoded.unlink()
        return ssim

    def choose(self, profile: Profile, target: float, low: int, high: int, guess: int, step: int = 4) -> Choice:
        """Return the highest CRF of ``profile``'s codec and preset in ``low``..``high`` that reaches ``target``."""
        return choose_crf(lambda crf: self.ssim(replace(profile, crf=crf)), target, low, high, guess, step)


def window(
    src: str,
    info: MediaInfo,
    workdir: Path,
    profile: Profile,
    sandbox: Sandbox,
    seconds: float,
    relay: tuple[str, int] | None = None,
) -> Window:
    """Keep ``seconds`` of the clip as ``profile`` frames them, in ``workdir``; read in the sandbox.

    They are ``WINDOWS`` pieces spread over the clip, not one: a clip's start, middle and end can
    differ in what an encoder makes of them.
    """
    content = min(info.duration, profile.max_duration) or profile.max_duration
    seconds = min(seconds, content)
    piece = seconds / WINDOWS
    spread = [(n + 0.5) * content / WINDOWS - piece / 2 for n in range(WINDOWS)]
    windows = [(round(start, 3), round(start + piece, 3)) for start in spread]
    workdir.mkdir(exist_ok=True)
    reference = workdir / "reference.mp4"
    argv = commands.reference_command(
        src,
        str(reference),
        profile,
        windows,
        sandbox.input_options(info.container, src),
        sandbox.global_options(),
    )
    source = () if is_relay(src) else (src,)
    jail = sandbox.confine(workdir, (*source, profile.watermark_image), relay)
    runner.run(argv, limits=sandbox.encode_limits(seconds), jail=jail)
    return Window(plain_file(reference), sandbox, seconds)


@dataclass(frozen=True)
class Search:
    """Where a codec's CRF search looks: the range, the first guess and the step (``bench.optimize`` measured them)."""

    low: int
    high: int
    guess: int
    step: int


def searches(fast: Profile) -> dict[str, Search]:
    """Return each codec's CRF search, around where the reference inputs landed (docs/benchmarks.md)."""
    return {
        "libx264": Search(low=fast.crf, high=fast.crf + 12, guess=fast.crf + 3, step=3),
        "libsvtav1": Search(low=20, high=60, guess=46, step=6),
    }


def cpu_seconds() -> float:
    """Return the CPU time of this process's finished children (every FFmpeg): differences measure a step."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


@dataclass(frozen=True)
class Made:
    """The renditions' files, what each was made with (``record``), and the CPU seconds of the probes' window."""

    files: dict[str, Path]
    record: dict[str, dict[str, Any]]
    window_cpu_seconds: float


def worth(rendition: dict[str, Any], published_bytes: int | None = None) -> bool:
    """Return whether a rendition may serve the video: at the published one's SSIM (within ``SSIM_TOLERANCE``), smaller.

    ``rendition`` is its record (``make_renditions``); without ``published_bytes`` only its quality is judged.
    """
    if rendition["ssim"] < rendition["target_ssim"] - SSIM_TOLERANCE:
        return False
    return published_bytes is None or rendition["bytes"] < published_bytes


def _scaled(report: Callable[[int], None], start: float, span: float) -> Callable[[float], None]:
    """Return a callback that reports a fraction of one encode as a percentage of the whole."""
    return lambda fraction: report(int(start + span * fraction))


def make_renditions(
    src: str,
    info: MediaInfo,
    workdir: Path,
    fast: Profile,
    wanted: dict[str, Profile],
    sandbox: Sandbox,
    cache_dir: Path,
    probe_seconds: float,
    relay: tuple[str, int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Made:
    """Make each of ``wanted`` (name: profile, its CRF to be found) at ``fast``'s SSIM; report 0..100 to ``progress``.

    The window and every probe come first (``window``, ``Window.choose``), then each rendition
    whole (``Pipeline.run``, bumpers rendered once per profile into ``cache_dir``), all in the sandbox.
    A rendition whose probes found no CRF near enough the target is not encoded: its record says
    ``published: false`` and it has no file.
    """
    report = progress or (lambda _percent: None)
    started = cpu_seconds()
    frames = window(src, info, workdir / "window", fast, sandbox, probe_seconds, relay)
    target = frames.ssim(fast)
    window_cpu = cpu_seconds() - started
    report(5)
    files: dict[str, Path] = {}
    record: dict[str, dict[str, Any]] = {}
    share = 90 / len(wanted)
    for n, (name, profile) in enumerate(wanted.items()):
        start, search = 5 + n * share, searches(fast)[profile.codec]
        before = cpu_seconds()
        choice = frames.choose(profile, target, search.low, search.high, search.guess, search.step)
        probed = cpu_seconds()
        report(int(start + share * 0.3))
        record[name] = {
            "codec": profile.codec,
            "preset": profile.preset,
            "crf": choice.crf,
            "ssim": round(choice.ssim, 5),
            "target_ssim": round(choice.target, 5),
            "probes": choice.probes,
            "bytes": 0,
            "probe_cpu_seconds": round(probed - before, 2),
            "cpu_seconds": 0.0,
            "published": worth({"ssim": choice.ssim, "target_ssim": choice.target}),
        }
        if not record[name]["published"]:
            continue
        (folder := workdir / name).mkdir(exist_ok=True)
        outputs = Pipeline(replace(profile, crf=choice.crf), cache_dir, sandbox).run(
            src, info, folder, _scaled(report, start + share * 0.3, share * 0.7), 1, relay, poster=False
        )
        files[name] = outputs.video
        record[name] |= {"bytes": outputs.video.stat().st_size, "cpu_seconds": round(cpu_seconds() - probed, 2)}
    return Made(files, record, round(window_cpu, 2))
