"""Run ffprobe and turn its JSON into a ``MediaInfo``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from media import runner
from media.sandbox import Sandbox, is_relay

# ffprobe names mp4 and mov alike ("mov,mp4,m4a,3gp,3g2,mj2"); the brand tells them apart.
QUICKTIME_BRANDS = {"qt"}
FORMAT_ALIASES = {"matroska,webm": "mkv", "avi": "avi", "mpegts": "ts", "flv": "flv", "ogg": "ogg"}


NOT_WHITELISTED = "Format not on whitelist"


class ProbeError(Exception):
    """ffprobe could not read the file as media.

    ``reason`` is ``format`` for a container outside the whitelist, or the runner's
    reason (``memory``, ``cpu``, ``timeout``, ``resolution``, ...); ``detail`` is
    FFmpeg's stderr, for the log only.
    """

    def __init__(self, message: str, reason: str | None = None, detail: str = "", repeated: bool = False) -> None:
        super().__init__(message)
        self.reason, self.detail, self.repeated = reason, detail, repeated

    @property
    def blame(self) -> str:
        """Whose fault the failure is (``runner.BLAME``): a container off the whitelist is the file's, and so is
        a suspect failure (a crash, the wall limit) that ``repeated`` in a second, fresh ffprobe."""
        if self.reason == "format" or (self.repeated and runner.BLAME.get(self.reason) == runner.SUSPECT):
            return runner.FILE
        return runner.BLAME.get(self.reason, runner.FILE)


@dataclass(frozen=True)
class MediaInfo:
    """What the pipeline needs to know about one input file."""

    container: str
    duration: float
    width: int
    height: int
    has_video: bool
    has_audio: bool
    video_codec: str | None = None
    fps: float = 0.0
    frames: int = 0
    streams: int = 0
    # None when the decoder could not read a picture (ffprobe then reports no pix_fmt).
    pixel_format: str | None = "yuv420p"

    @property
    def resolution(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def pixel_rate(self) -> float:
        """Pixels per second to decode: width x height x frame rate."""
        return self.width * self.height * self.fps


def probe_args(path: str, options: dict[str, Any] | None = None, ffprobe: str = "ffprobe") -> list[str]:
    """Return the ffprobe argv that prints format and streams as JSON; ``options`` go before the input."""
    flags = [arg for key, value in (options or {}).items() for arg in (f"-{key}", str(value))]
    return [ffprobe, "-hide_banner", "-v", "error", *flags, "-show_format", "-show_streams", "-of", "json", path]


def container_name(format_name: str, major_brand: str | None) -> str:
    """Return a short container name (mp4, mov, mkv, ...) for ffprobe's format."""
    if "mp4" in format_name.split(","):
        brand = (major_brand or "").strip().lower()
        return "mov" if brand in QUICKTIME_BRANDS else "mp4"
    return FORMAT_ALIASES.get(format_name, format_name.split(",")[0])


def _rotation(stream: dict[str, Any]) -> int:
    for side in stream.get("side_data_list", []):
        if "rotation" in side:
            return int(float(side["rotation"]))
    return int(float(stream.get("tags", {}).get("rotate", 0) or 0))


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def frame_rate(value: Any) -> float:
    """Return ffprobe's ``num/den`` rate as a number; 0 when unknown."""
    num, _, den = str(value or "").partition("/")
    numerator, denominator = _float(num) or 0.0, _float(den or 1) or 0.0
    return numerator / denominator if denominator > 0 else 0.0


def parse_probe(data: dict[str, Any]) -> MediaInfo:
    """Return the ``MediaInfo`` for ffprobe's JSON; display size accounts for rotation."""
    fmt = data.get("format") or {}
    streams = data.get("streams") or []
    videos = [s for s in streams if s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic")]
    audios = [s for s in streams if s.get("codec_type") == "audio"]
    video = videos[0] if videos else {}
    width, height = int(video.get("width") or 0), int(video.get("height") or 0)
    if abs(_rotation(video)) % 180 == 90:
        width, height = height, width
    duration = _float(fmt.get("duration")) or _float(video.get("duration")) or 0.0
    # The average rate is what the stream really holds; r_frame_rate is a timebase guess.
    fps = frame_rate(video.get("avg_frame_rate")) or frame_rate(video.get("r_frame_rate"))
    frames = int(_float(video.get("nb_frames")) or duration * fps)
    return MediaInfo(
        container=container_name(fmt.get("format_name", ""), fmt.get("tags", {}).get("major_brand")),
        duration=duration,
        width=width,
        height=height,
        has_video=bool(videos),
        has_audio=bool(audios),
        video_codec=video.get("codec_name"),
        fps=fps,
        frames=frames,
        streams=len(streams),
        pixel_format=video.get("pix_fmt"),
    )


def probe_twice(path: str, sandbox: Sandbox | None = None, relay: tuple[str, int] | None = None) -> MediaInfo:
    """Probe ``path``; a suspect failure (a crash, the wall limit) is tried once more in a fresh ffprobe.

    The same reason again raises with ``repeated`` set: the file's verdict, not a busy host's.
    """
    try:
        return probe(path, sandbox, relay)
    except ProbeError as exc:
        if exc.blame != runner.SUSPECT:
            raise
        first = exc.reason
    try:
        return probe(path, sandbox, relay)
    except ProbeError as exc:
        exc.repeated = exc.reason == first
        raise


def probe(path: str, sandbox: Sandbox | None = None, relay: tuple[str, int] | None = None) -> MediaInfo:
    """Probe ``path`` with ffprobe in the sandbox; raise ``ProbeError`` when it is not readable media.

    ``path`` is a file (the jail may read it and nothing else) or the worker's relay URL
    (``relay``: its socket and port, the jail's only way out). Without a sandbox (the
    pipeline's own outputs) only the default limits apply.
    """
    sandbox = sandbox or Sandbox()
    jail = sandbox.confine(read=() if is_relay(path) else (path,), relay=relay)
    try:
        argv = probe_args(path, sandbox.input_options(source=path))
        out = runner.run(argv, limits=sandbox.probe_limits(), capture=True, jail=jail)
    except runner.FFmpegError as exc:
        reason = "format" if NOT_WHITELISTED in exc.stderr else exc.reason
        lines = exc.stderr.strip().splitlines()
        raise ProbeError(lines[-1] if lines else "ffprobe failed", reason, exc.stderr) from exc
    try:
        return parse_probe(json.loads(out))
    except (ValueError, TypeError, AttributeError) as exc:
        raise ProbeError(f"unreadable ffprobe output: {exc}") from exc
