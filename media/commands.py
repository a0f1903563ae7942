"""Build FFmpeg argv lists with ffmpeg-python; nothing here spawns a process."""

from __future__ import annotations

from typing import Any

import ffmpeg

from media.profile import Profile

GLOBAL_ARGS = ("-hide_banner", "-nostdin", "-loglevel", "error", "-nostats", "-progress", "pipe:1")
FADE_SECONDS = 0.4


def _encoder_args(p: Profile) -> dict[str, Any]:
    """Return output options shared by the clip and the bumpers (required for stream copy joins)."""
    return {
        "vcodec": "libx264",
        "pix_fmt": "yuv420p",
        "profile:v": "high",
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
    video = _fit(ffmpeg.input(src, t=p.max_duration, **(input_options or {})).video, p)
    if p.watermark_image:
        logo = ffmpeg.input(p.watermark_image).filter("scale", -1, max(p.height // 10, 16))
        margin = max(p.height // 40, 8)
        video = ffmpeg.overlay(video, logo, x=f"W-w-{margin}", y=f"H-h-{margin}")
    video = video.filter("format", "yuv420p")
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
