"""Check a probed upload against the configured limits."""

from __future__ import annotations

from dataclasses import dataclass

from media.probe import MediaInfo, ProbeError

FORMAT, BOUNDS = "format", "bounds"  # MediaRejected's kinds


class MediaRejected(Exception):
    """The upload is not acceptable: ``kind`` is ``format`` (not an allowed video) or ``bounds`` (outside a limit)."""

    def __init__(self, code: str, message: str, kind: str) -> None:
        super().__init__(message)
        self.code, self.message, self.kind = code, message, kind


@dataclass(frozen=True)
class Limits:
    """Bounds on what an upload may be; sizes compare long side to long side."""

    allowed_formats: tuple[str, ...] = ("mp4", "mov")
    min_duration: float = 1.0
    max_duration: float = 1800.0
    min_width: int = 320
    min_height: int = 240
    max_width: int = 7680
    max_height: int = 4320
    max_fps: float = 240.0
    max_frames: int = 216_000
    max_pixel_rate: float = 7680 * 4320 * 30
    max_streams: int = 16


def check(info: MediaInfo, limits: Limits) -> None:
    """Raise ``MediaRejected`` when ``info`` is outside ``limits``.

    Portrait clips are compared with their sides swapped, so 1080x1920 meets a
    1920x1080 minimum.
    """
    if not info.has_video:
        raise MediaRejected("no_video_stream", "The file has no video stream.", FORMAT)
    if info.pixel_format is None:
        raise MediaRejected("not_a_video", "The video stream can't be decoded.", FORMAT)
    if info.container not in limits.allowed_formats:
        allowed = ", ".join(limits.allowed_formats)
        raise MediaRejected(
            "format_not_allowed", f"Container {info.container!r} is not allowed (allowed: {allowed}).", FORMAT
        )
    if not limits.min_duration <= info.duration <= limits.max_duration:
        raise MediaRejected(
            "duration_out_of_bounds",
            f"Duration {info.duration:.1f}s is outside {limits.min_duration:g}-{limits.max_duration:g}s.",
            BOUNDS,
        )
    long_side, short_side = max(info.width, info.height), min(info.width, info.height)
    too_small = long_side < max(limits.min_width, limits.min_height) or short_side < min(
        limits.min_width, limits.min_height
    )
    too_big = long_side > max(limits.max_width, limits.max_height) or short_side > min(
        limits.max_width, limits.max_height
    )
    if too_small or too_big:
        raise MediaRejected(
            "resolution_out_of_bounds",
            f"Resolution {info.resolution} is outside {limits.min_width}x{limits.min_height}"
            f" to {limits.max_width}x{limits.max_height}.",
            BOUNDS,
        )
    # What no real clip has: checked before any frame is decoded.
    if info.streams > limits.max_streams:
        raise MediaRejected(
            "too_many_streams",
            f"The file has {info.streams} streams; at most {limits.max_streams} are allowed.",
            BOUNDS,
        )
    if info.fps > limits.max_fps:
        raise MediaRejected(
            "frame_rate_out_of_bounds", f"Frame rate {info.fps:.0f} fps is over {limits.max_fps:g} fps.", BOUNDS
        )
    if info.frames > limits.max_frames:
        raise MediaRejected(
            "too_many_frames",
            f"The file declares {info.frames} frames; at most {limits.max_frames} are allowed.",
            BOUNDS,
        )
    if info.pixel_rate > limits.max_pixel_rate:
        raise MediaRejected(
            "pixel_rate_out_of_bounds",
            f"{info.resolution} at {info.fps:.0f} fps is more than {limits.max_pixel_rate:.3g} pixels per second.",
            BOUNDS,
        )


def rejection(error: ProbeError, limits: Limits) -> MediaRejected:
    """Return the answer for a file ffprobe could not read; FFmpeg's own words stay in the log."""
    if error.reason == "format":
        allowed = ", ".join(limits.allowed_formats)
        return MediaRejected("format_not_allowed", f"The file's container is not one of: {allowed}.", FORMAT)
    if error.reason == "resolution":
        return MediaRejected(
            "resolution_out_of_bounds",
            f"A picture in the file is larger than {limits.max_width}x{limits.max_height}.",
            BOUNDS,
        )
    if error.reason in ("memory", "cpu", "timeout", "output"):
        return MediaRejected("too_complex", "Reading the file needs more memory or time than allowed.", BOUNDS)
    return MediaRejected("not_a_video", "The file is not a readable video.", FORMAT)
