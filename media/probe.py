"""Run ffprobe and turn its JSON into a ``MediaInfo``."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any

# ffprobe names mp4 and mov alike ("mov,mp4,m4a,3gp,3g2,mj2"); the brand tells them apart.
QUICKTIME_BRANDS = {"qt"}
FORMAT_ALIASES = {"matroska,webm": "mkv", "avi": "avi", "mpegts": "ts", "flv": "flv", "ogg": "ogg"}


class ProbeError(Exception):
    """ffprobe could not read the file as media."""


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

    @property
    def resolution(self) -> str:
        return f"{self.width}x{self.height}"


def probe_args(path: str, ffprobe: str = "ffprobe") -> list[str]:
    """Return the ffprobe argv that prints format and streams as JSON."""
    return [ffprobe, "-v", "error", "-show_format", "-show_streams", "-of", "json", path]


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
    return MediaInfo(
        container=container_name(fmt.get("format_name", ""), fmt.get("tags", {}).get("major_brand")),
        duration=duration,
        width=width,
        height=height,
        has_video=bool(videos),
        has_audio=bool(audios),
        video_codec=video.get("codec_name"),
    )


def probe(path: str, timeout: float = 30.0) -> MediaInfo:
    """Probe ``path`` with ffprobe; raise ``ProbeError`` when it is not readable media."""
    try:
        proc = subprocess.run(probe_args(path), capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ProbeError(f"ffprobe timed out after {timeout:g}s") from exc
    if proc.returncode != 0:
        message = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ProbeError(message[-1] if message else "ffprobe failed")
    try:
        return parse_probe(json.loads(proc.stdout))
    except (ValueError, TypeError) as exc:
        raise ProbeError(f"unreadable ffprobe output: {exc}") from exc
