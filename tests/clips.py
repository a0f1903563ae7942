"""Make test clips with FFmpeg's own test sources (nothing is downloaded)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def make_clip(
    path: Path,
    width: int,
    height: int,
    seconds: float,
    *,
    audio: bool = True,
    fps: int = 30,
    extra: tuple[str, ...] = (),
) -> Path:
    """Write a test-pattern clip (with a tone when ``audio``) to ``path``; the suffix picks the container."""
    argv = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y"]
    argv += ["-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={fps}:duration={seconds}"]
    if audio:
        argv += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}", "-c:a", "aac", "-shortest"]
    argv += ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "32", "-pix_fmt", "yuv420p", *extra, str(path)]
    subprocess.run(argv, check=True)
    return path


def make_image(path: Path, width: int = 640, height: int = 480) -> Path:
    """Write a single PNG frame."""
    argv = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y"]
    argv += ["-f", "lavfi", "-i", f"testsrc2=size={width}x{height}"]
    subprocess.run([*argv, "-frames:v", "1", str(path)], check=True)
    return path


def ffprobe(path: Path) -> dict:
    """Return ffprobe's JSON for ``path``."""
    import json

    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path)],
        check=True,
        capture_output=True,
    ).stdout
    return json.loads(out)


def moov_before_mdat(path: Path) -> bool:
    """Return whether the MP4's index (moov) precedes its media data (mdat): playable while downloading."""
    offset, order = 0, []
    with path.open("rb") as f:
        while True:
            header = f.read(8)
            if len(header) < 8:
                break
            size, kind = int.from_bytes(header[:4], "big"), header[4:8].decode("latin-1")
            if size == 1:
                size = int.from_bytes(f.read(8), "big")
            order.append(kind)
            if size < 8:
                break
            offset += size
            f.seek(offset)
    return "moov" in order and "mdat" in order and order.index("moov") < order.index("mdat")
