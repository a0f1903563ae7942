"""The benchmarks' yardsticks: the floor makes the pipeline's frames, SSIM finds them, the naive pipeline works.

(The benchmarks themselves are not tests: ``make bench`` runs them, and nothing here is timed.)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bench import reference as ref
from bench.pipeline import PROFILE, SANDBOX, spread
from media.pipeline import Pipeline
from media.probe import probe
from tests.clips import ffprobe

pytestmark = pytest.mark.system  # FFmpeg

SHORT = dataclasses.replace(PROFILE, max_duration=2.0)


@pytest.fixture(scope="module")
def source() -> Path:
    return ref.reference("1080x1920 portrait", 3.0)


def test_the_reference_input_is_footage_sized_with_audio(source: Path) -> None:
    streams = {s["codec_type"]: s for s in ffprobe(source)["streams"]}
    assert (streams["video"]["width"], streams["video"]["height"]) == (1080, 1920)
    assert streams["video"]["r_frame_rate"] == "30/1" and "audio" in streams
    assert abs(float(ffprobe(source)["format"]["duration"]) - 3.0) < 0.1


def test_the_floor_makes_the_frames_the_pipeline_makes(source: Path, tmp_path: Path) -> None:
    ref.floor(source, tmp_path / "floor.mp4", SHORT)
    Pipeline(SHORT, tmp_path / "bumpers", SANDBOX).run(source, probe(str(source)), tmp_path)
    floor = ref.ssim(tmp_path / "floor.mp4", source, SHORT)
    shipped = ref.ssim(tmp_path / "video.mp4", source, SHORT, skip=SHORT.intro_seconds)
    assert 0.85 < floor < 1.0 and abs(floor - shipped) < 0.002, (floor, shipped)
    # One frame off, and SSIM says so: the score measures these frames, not any frames.
    assert ref.ssim(tmp_path / "video.mp4", source, SHORT, skip=SHORT.intro_seconds + 1 / SHORT.fps) < floor - 0.05


def test_the_naive_pipeline_makes_the_same_video_the_slow_way(source: Path, tmp_path: Path) -> None:
    out = ref.naive(source, tmp_path, SHORT)
    video = next(s for s in ffprobe(out)["streams"] if s["codec_type"] == "video")
    assert (video["width"], video["height"]) == (SHORT.width, SHORT.height)
    expected = SHORT.intro_seconds + SHORT.max_duration + SHORT.outro_seconds
    assert abs(float(video["duration"]) - expected) < 0.1
    assert ref.ssim(out, source, SHORT, skip=SHORT.intro_seconds) > 0.85


def test_numbers_are_medians_with_their_range() -> None:
    assert spread([3.0, 1.0, 2.0]) == "2.0 s (1.0 to 3.0)"
    assert spread([1.25], "ms", 2) == "1.25 ms (one run)"
