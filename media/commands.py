"""Build FFmpeg argv lists with ffmpeg-python; nothing here spawns a process."""

from __future__ import annotations

from typing import Any

import ffmpeg

from media.profile import Profile

GLOBAL_ARGS = ("-hide_banner", "-nostdin", "-loglevel", "error", "-nostats", "-progress", "pipe:1")
FADE_SECONDS = 0.4


def _encoder_args(p: Profile) -> dict[str, Any]:
    """Return output options shared by the clip and the bumpers (required for stream copy joins)."""
    codec: dict[str, Any] = {"vcodec": p.codec}
    if p.codec == "libx264":
        codec["profile:v"] = "high"
    return {
        **codec,
        "pix_fmt": "yuv420p",
        "crf": p.crf,
        "preset": p.preset,
        "r": p.fps,
        "g": p.fps * 2,
        "video_track_timescale": p.timescale,
        "an": None,
        "sn": None,
        "dn": None,
        "map_metadata": -1,
    }


def _fit(stream: Any, p: Profile) -> Any:
    """Scale to fit the frame, pad to exactly its size with square pixels, set the rate."""
    return (
        stream.filter("scale", p.width, p.height, force_original_aspect_ratio="decrease", force_divisible_by=2)
        .filter("pad", p.width, p.height, "(ow-iw)/2", "(oh-ih)/2", color="black")
        .filter("setsar", 1)
        .filter("fps", p.fps)
    )


def _compile(out: Any) -> list[str]:
    return out.global_args(*GLOBAL_ARGS).overwrite_output().compile()


def _frames(video: Any, p: Profile) -> Any:
    """Return the user's video fitted to the frame, watermarked, in yuv420p: what every rendition encodes."""
    video = _fit(video, p)
    if p.watermark_image:
        logo = ffmpeg.input(p.watermark_image).filter("scale", -1, max(p.height // 10, 16))
        margin = max(p.height // 40, 8)
        video = ffmpeg.overlay(video, logo, x=f"W-w-{margin}", y=f"H-h-{margin}")
    return video.filter("format", "yuv420p")


def encode_command(
    src: str,
    dst: str,
    p: Profile,
    input_options: dict[str, Any] | None = None,
    output_options: dict[str, Any] | None = None,
    global_args: list[str] | None = None,
    poster: tuple[str, float] | None = None,
) -> list[str]:
    """Return argv that trims, fits, watermarks and encodes the user's clip in one pass.

    ``input_options`` (the sandbox's) restrict how FFmpeg reads the user's file; ``output_options``
    and ``global_args`` bound the encoder's and the filters' threads. ``poster`` (a JPEG's path,
    seconds into the clip) takes the poster from the same decode: no second FFmpeg reading the video.
    """
    video = _frames(ffmpeg.input(src, t=p.max_duration, **(input_options or {})).video, p)
    outputs = []
    if poster:
        branches = video.split()
        video, frame = branches[0], branches[1]
        path, at = poster
        # The branch ends after its frame: frames past it are dropped here, not queued for a finished output.
        still = frame.filter("trim", start=at, end=at + 1.5 / p.fps).filter("setpts", "PTS-STARTPTS")
        outputs.append(ffmpeg.output(still, path, vframes=1, **{"q:v": 3}))
    out = ffmpeg.output(video, dst, movflags="+faststart", **_encoder_args(p), **(output_options or {}))
    return _compile(ffmpeg.merge_outputs(out, *outputs).global_args(*(global_args or [])))


def reference_command(
    src: str,
    dst: str,
    p: Profile,
    windows: list[tuple[float, float]],
    input_options: dict[str, Any] | None = None,
    global_args: list[str] | None = None,
) -> list[str]:
    """Return argv that writes ``windows`` (start, end) of the clip, joined, as every rendition frames them, losslessly.

    The quality probes (media/quality.py) encode this and compare their result with it.
    """
    end = max(stop for _, stop in windows)
    source = ffmpeg.input(src, t=f"{end:.3f}", **(input_options or {})).video
    branches = source.split() if len(windows) > 1 else None
    pieces = [
        (branches[n] if branches else source).trim(start=f"{start:.3f}", end=f"{stop:.3f}").setpts("PTS-STARTPTS")
        for n, (start, stop) in enumerate(windows)
    ]
    joined = ffmpeg.concat(*pieces, v=1, a=0) if len(pieces) > 1 else pieces[0]
    video = _frames(joined, p)
    out = ffmpeg.output(video, dst, vcodec="libx264", qp=0, preset="ultrafast", an=None, sn=None, dn=None)
    return _compile(out.global_args(*(global_args or [])))


def sample_command(src: str, dst: str, p: Profile, output_options: dict[str, Any] | None = None) -> list[str]:
    """Return argv that encodes ``src`` (a reference window) with the profile's encoder and settings."""
    return _compile(ffmpeg.input(src).output(dst, **_encoder_args(p), **(output_options or {})))


def ssim_command(encoded: str, reference: str, stats: str) -> list[str]:
    """Return argv that writes the SSIM of each frame of ``encoded`` against ``reference`` to ``stats``."""
    compared = ffmpeg.filter([ffmpeg.input(encoded).video, ffmpeg.input(reference).video], "ssim", stats_file=stats)
    return _compile(ffmpeg.output(compared, "-", f="null"))


def bumper_command(image: str, dst: str, seconds: float, p: Profile) -> list[str]:
    """Return argv that renders a still image as a bumper clip with fades."""
    video = _fit(ffmpeg.input(image, loop=1, framerate=p.fps, t=seconds).video, p)
    fade = min(FADE_SECONDS, seconds / 2)
    video = video.filter("fade", type="in", start_time=0, duration=fade).filter(
        "fade", type="out", start_time=max(seconds - fade, 0), duration=fade
    )
    video = video.filter("format", "yuv420p")
    return _compile(ffmpeg.output(video, dst, t=seconds, **_encoder_args(p)))


def concat_list(paths: list[str]) -> str:
    """Return a concat-demuxer list file body for ``paths``."""
    return "".join("file '{}'\n".format(path.replace("'", "'\\''")) for path in paths)


def concat_command(list_path: str, dst: str) -> list[str]:
    """Return argv that joins the pieces in ``list_path`` by stream copy, moov first."""
    return _compile(ffmpeg.input(list_path, f="concat", safe=0).output(dst, c="copy", movflags="+faststart"))


def poster_command(src: str, dst: str, at: float) -> list[str]:
    """Return argv that grabs one JPEG frame at ``at`` seconds."""
    return _compile(ffmpeg.input(src, ss=f"{at:.3f}").output(dst, vframes=1, **{"q:v": 3}))
