"""Reference inputs, FFmpeg's floor, the naive pipeline and SSIM: what the benchmarks compare against.

The inputs are made here with FFmpeg, not downloaded: a textured still with detail at every
scale (octaves of coloured noise, like foliage or gravel) under a moving camera, a test card
moving across it, and sensor grain that changes every frame, with pink noise and a tone for
audio. They cost an encoder what camera footage costs (every block changes, every frame);
FFmpeg's bare test cards do not. They are cached in ``bench/.cache``, made once per machine.
Set ``BENCH_FOOTAGE`` to a real clip to add it to the table.

Nothing here knows the product's code paths: the floor and the naive pipeline are written out
by hand, as someone comparing against FFmpeg alone would write them.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from config.settings import ROOT
from media.profile import Profile

CACHE = ROOT / "bench" / ".cache"
NAIVE = ("medium", 23)  # x264's own defaults: preset, CRF
# name: (width, height, fps, seconds)
REFERENCES = {
    "1080p landscape": (1920, 1080, 30, 45.0),
    "1080x1920 portrait": (1080, 1920, 30, 45.0),
    "4K at 60 fps": (3840, 2160, 60, 45.0),
}


def ffmpeg(*args: str, level: str = "error") -> str:
    """Run FFmpeg with ``args``; return its stderr (where filters such as ssim report, at ``info``)."""
    argv = ["ffmpeg", "-hide_banner", "-nostdin", "-nostats", "-loglevel", level, "-y", *args]
    return subprocess.run(argv, check=True, capture_output=True, text=True).stderr


def _octave(size: tuple[int, int], out: tuple[int, int], seed: int) -> str:
    w, h = size
    return (
        f"color=c=black:s={w}x{h},geq=lum='random({seed})*255':cb='128+(random({seed + 7})-0.5)*90'"
        f":cr='128+(random({seed + 13})-0.5)*90',scale={out[0]}:{out[1]}:flags=bicubic,format=yuv444p"
    )


def reference(name: str, seconds: float | None = None) -> Path:
    """Return the reference input ``name`` (its first ``seconds`` when given), making it on first use."""
    w, h, fps, full = REFERENCES[name]
    seconds = seconds or full
    path = CACHE / f"{w}x{h}p{fps}-{seconds:g}s.mp4"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    still = CACHE / f"still-{w}x{h}.png"
    big = (w * 3 // 2, h * 3 // 2)  # the camera pans over a still half as large again as the frame
    if not still.exists():
        layers = [((max(w // 160, 4), max(h // 160, 4)), 1), ((w // 40, h // 40), 2), ((w // 10, h // 10), 3)]
        layers.append(((big[0] // 2, big[1] // 2), 4))
        graph = ";".join(f"{_octave(size, big, seed)}[o{seed}]" for size, seed in layers)
        graph += ";[o1][o2]blend=all_expr='A*0.55+B*0.45'[a];[a][o3]blend=all_expr='A*0.7+B*0.3'[b]"
        graph += ";[b][o4]blend=all_expr='A*0.8+B*0.2',eq=contrast=1.6:saturation=1.3"
        ffmpeg("-filter_complex", graph, "-frames:v", "1", str(still))
    card = f"testsrc2=size={w // 3}x{h // 3}:rate={fps}"
    video = (
        f"[0:v]loop=loop=-1:size=1,fps={fps},crop={w}:{h}:x='(iw-ow)/2*(1+sin(t*0.7))':y='(ih-oh)/2*(1+cos(t*0.5))'"
        f"[bg];[bg][1:v]overlay=x='(W-w)*(0.5+0.45*sin(t*1.3))':y='(H-h)*(0.5+0.45*cos(t*0.9))',"
        "format=yuv420p,noise=alls=3:allf=t[v];[2:a][3:a]amix=inputs=2[a]"
    )
    tmp = path.with_suffix(".part.mp4")
    ffmpeg(
        *("-i", str(still), "-f", "lavfi", "-i", card),
        *("-f", "lavfi", "-i", "anoisesrc=color=pink:amplitude=0.05:sample_rate=48000"),
        *("-f", "lavfi", "-i", "sine=frequency=220:sample_rate=48000"),
        *("-filter_complex", video, "-map", "[v]", "-map", "[a]", "-t", f"{seconds:g}"),
        *("-c:v", "libx264", "-preset", "ultrafast", "-crf", "22", "-pix_fmt", "yuv420p", "-g", str(fps * 2)),
        *("-c:a", "aac", "-b:a", "128k", str(tmp)),
    )
    tmp.replace(path)
    return path


def frame_graph(p: Profile, source: str = "0:v", logo: str = "1:v") -> str:
    """Return the filter graph that turns the input into the profile's frame with the watermark."""
    margin = max(p.height // 40, 8)
    return (
        f"[{source}]scale={p.width}:{p.height}:force_original_aspect_ratio=decrease:force_divisible_by=2,"
        f"pad={p.width}:{p.height}:(ow-iw)/2:(oh-ih)/2:color=black,setsar=1,fps={p.fps}[fit];"
        f"[{logo}]scale=-1:{max(p.height // 10, 16)}[logo];[fit][logo]overlay=W-w-{margin}:H-h-{margin},format=yuv420p"
    )


def x264(p: Profile, preset: str | None = None, crf: int | None = None) -> list[str]:
    """Return the encoder options: the profile's unless ``preset`` or ``crf`` say otherwise."""
    return ["-an", "-c:v", "libx264", "-preset", preset or p.preset, "-crf", str(crf if crf is not None else p.crf)]


def floor(src: Path, dst: Path, p: Profile, preset: str | None = None, crf: int | None = None) -> None:
    """The floor: one FFmpeg command from a local file to the same frames, watermark, preset and CRF."""
    assert p.watermark_image
    ffmpeg("-t", f"{p.max_duration:g}", "-i", str(src), "-i", p.watermark_image, "-filter_complex", frame_graph(p),
           *x264(p, preset, crf), "-pix_fmt", "yuv420p", "-g", str(p.fps * 2), str(dst))  # fmt: skip


def naive(src: Path, work: Path, p: Profile) -> Path:
    """The obvious pipeline: trim and fit, bumpers per video, a re-encoding concat with the watermark.

    Every encode at x264's defaults (``medium``, CRF 23), as someone who sets neither would get.
    """
    assert p.intro_image and p.outro_image and p.watermark_image
    fit = frame_graph(p).split(";")[0].removesuffix("[fit]")
    body, final = work / "naive-body.mp4", work / "naive.mp4"
    ffmpeg("-t", f"{p.max_duration:g}", "-i", str(src), "-filter_complex", fit, *x264(p, *NAIVE), str(body))
    bumpers = []
    for kind, image, seconds in (("intro", p.intro_image, p.intro_seconds), ("outro", p.outro_image, p.outro_seconds)):
        out = work / f"naive-{kind}.mp4"
        fade = f"fade=in:st=0:d=0.4,fade=out:st={seconds - 0.4:g}:d=0.4"
        ffmpeg("-loop", "1", "-framerate", str(p.fps), "-t", f"{seconds:g}", "-i", image,
               "-filter_complex", f"{fit},{fade}", *x264(p, *NAIVE), str(out))  # fmt: skip
        bumpers.append(out)
    joined = "[0:v][1:v][2:v]concat=n=3:v=1:a=0[all];" + frame_graph(p, "all", "3:v")
    ffmpeg("-i", str(bumpers[0]), "-i", str(body), "-i", str(bumpers[1]), "-i", p.watermark_image,
           "-filter_complex", joined, *x264(p, *NAIVE), "-movflags", "+faststart", str(final))  # fmt: skip
    ffmpeg("-ss", f"{p.intro_seconds + 1:g}", "-i", str(final), "-vframes", "1", "-q:v", "3", str(work / "naive.jpg"))
    return final


def ssim(output: Path, src: Path, p: Profile, skip: float = 0.0) -> float:
    """Return the SSIM (all planes) of ``output``'s content against the source in the same frame and watermark.

    ``skip`` is the intro's length: the content starts there in the output and at 0 in the source.
    """
    assert p.watermark_image
    seconds = f"{p.max_duration:g}"
    graph = (
        f"[0:v]trim=start={skip:g}:duration={seconds},setpts=PTS-STARTPTS[out];"
        + frame_graph(p, "1:v", "2:v")
        + f",trim=duration={seconds},setpts=PTS-STARTPTS[ref];[out][ref]ssim=shortest=1"
    )
    log = ffmpeg("-i", str(output), "-t", seconds, "-i", str(src), "-i", p.watermark_image,
                 "-filter_complex", graph, "-f", "null", "-", level="info")  # fmt: skip
    found = re.search(r"All:([0-9.]+)", log)
    if not found:
        raise RuntimeError(f"no SSIM in FFmpeg's output: {log[-500:]}")
    return float(found.group(1))
