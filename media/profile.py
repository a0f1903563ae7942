"""The output profile: everything that decides what a processed video looks like."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

MAX_BUMPERS_SECONDS = 5.0
CODECS = ("libx264", "libsvtav1")  # H.264 for every player; AV1 where the device decodes it


@dataclass(frozen=True)
class Profile:
    """Output size, rate, length, encoder settings, bumpers and watermark."""

    width: int = 1280
    height: int = 720
    fps: int = 30
    max_duration: float = 30.0
    crf: int = 22  # bench.pipeline: above x264's default pipeline's SSIM at veryfast's speed
    preset: str = "veryfast"  # x264's name; SVT-AV1's is a number, 0 (slowest) to 13
    codec: str = "libx264"
    intro_seconds: float = 2.0
    outro_seconds: float = 2.0
    intro_image: str | None = None
    outro_image: str | None = None
    watermark_image: str | None = None

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ValueError(f"codec must be one of {', '.join(CODECS)}")
        if self.width % 2 or self.height % 2:
            raise ValueError("output width and height must be even for yuv420p")
        if self.intro_seconds < 0 or self.outro_seconds < 0:
            raise ValueError("bumper lengths must not be negative")
        if self.intro_seconds + self.outro_seconds > MAX_BUMPERS_SECONDS:
            raise ValueError(f"intro and outro together must last at most {MAX_BUMPERS_SECONDS:g}s")

    @property
    def timescale(self) -> int:
        """MP4 track timescale shared by every piece, so they join without re-encoding."""
        return self.fps * 1000

    def fingerprint(self) -> str:
        """Return a short hash of the encoding settings and bumper images."""
        digest = hashlib.sha256(repr(sorted(asdict(self).items())).encode())
        for image in (self.intro_image, self.outro_image):
            if image and Path(image).is_file():
                digest.update(Path(image).read_bytes())
        return digest.hexdigest()[:16]
