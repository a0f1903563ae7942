"""What ``media/`` runs with, from the settings: the upload limits, the output profile, the sandbox.

``media/`` takes these plain values and never reads the settings itself.
"""

from __future__ import annotations

from config import ConfigError, Settings
from media import profile, sandbox, validate


def limits(s: Settings) -> validate.Limits:
    """Return the bounds an upload must meet (the ``VIDEO_*`` settings)."""
    return validate.Limits(
        allowed_formats=tuple(s.VIDEO_ALLOWED_FORMATS),
        min_duration=s.VIDEO_MIN_DURATION,
        max_duration=s.VIDEO_MAX_DURATION,
        min_width=s.VIDEO_MIN_WIDTH,
        min_height=s.VIDEO_MIN_HEIGHT,
        max_width=s.VIDEO_MAX_WIDTH,
        max_height=s.VIDEO_MAX_HEIGHT,
        max_fps=s.VIDEO_MAX_FPS,
        max_frames=s.VIDEO_MAX_FRAMES,
        max_pixel_rate=s.VIDEO_MAX_PIXEL_RATE,
        max_streams=s.VIDEO_MAX_STREAMS,
    )


def output(s: Settings) -> profile.Profile:
    """Return the output profile (the ``OUTPUT_*``, bumper and watermark settings)."""
    return profile.Profile(
        width=s.OUTPUT_WIDTH,
        height=s.OUTPUT_HEIGHT,
        fps=s.OUTPUT_FPS,
        max_duration=s.OUTPUT_MAX_DURATION,
        crf=s.OUTPUT_CRF,
        preset=s.OUTPUT_PRESET,
        intro_seconds=s.INTRO_SECONDS,
        outro_seconds=s.OUTRO_SECONDS,
        intro_image=s.INTRO_IMAGE,
        outro_image=s.OUTRO_IMAGE,
        watermark_image=s.WATERMARK_IMAGE or None,
    )


def confinement(s: Settings) -> sandbox.Sandbox:
    """Return the sandbox every ffprobe and FFmpeg runs in (the ``VIDEO_*`` and ``FFMPEG_*`` settings).

    Raises ``ConfigError`` for a container in ``VIDEO_ALLOWED_FORMATS`` with no known demuxer.
    """
    try:
        sandbox.demuxers(s.VIDEO_ALLOWED_FORMATS)
    except sandbox.UnknownContainer as exc:
        raise ConfigError(f"VIDEO_ALLOWED_FORMATS: {exc}") from exc
    return sandbox.Sandbox(
        formats=tuple(s.VIDEO_ALLOWED_FORMATS),
        max_pixels=s.VIDEO_MAX_WIDTH * s.VIDEO_MAX_HEIGHT,
        threads=s.FFMPEG_THREADS or sandbox.share(1),
        share_cores=not s.FFMPEG_THREADS,
        probe_memory=s.FFPROBE_MEMORY_MB * sandbox.MiB,
        probe_seconds=s.FFPROBE_TIMEOUT,
        encode_memory=s.FFMPEG_MEMORY_MB * sandbox.MiB,
        timeout_base=s.FFMPEG_TIMEOUT_BASE,
        timeout_per_second=s.FFMPEG_TIMEOUT_PER_SECOND,
        cpu_per_second=s.FFMPEG_CPU_PER_SECOND,
        jail=s.MEDIA_JAIL,
    )
