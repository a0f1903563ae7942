"""The pipeline with real FFmpeg on generated clips (no S3, database or queue)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from config.settings import ASSETS_DIR
from media.pipeline import Outputs, Pipeline
from media.probe import ProbeError, probe
from media.profile import Profile
from tests.clips import ffprobe, moov_before_mdat

pytestmark = pytest.mark.system  # FFmpeg

BRANDED = Profile(
    intro_image=str(ASSETS_DIR / "intro.png"),
    outro_image=str(ASSETS_DIR / "outro.png"),
    watermark_image=str(ASSETS_DIR / "logo.png"),
)
PLAIN = Profile(intro_seconds=0, outro_seconds=0)


def run(pipeline: Pipeline, src: Path, workdir: Path, progress: list[float] | None = None) -> Outputs:
    workdir.mkdir()
    return pipeline.run(src, probe(str(src)), workdir, progress.append if progress is not None else None)


def assert_delivery_format(video: Path, duration: float) -> None:
    data = ffprobe(video)
    streams = data["streams"]
    assert [s["codec_type"] for s in streams] == ["video"], "no audio, nothing but the picture"
    v = streams[0]
    assert (v["codec_name"], v["pix_fmt"], v["width"], v["height"]) == ("h264", "yuv420p", 1280, 720)
    assert v["sample_aspect_ratio"] == "1:1" and v["r_frame_rate"] == "30/1"
    assert float(data["format"]["duration"]) == pytest.approx(duration, abs=0.15)
    assert moov_before_mdat(video), "+faststart puts the index first"


def mean_red(video: Path, at: float, box: str) -> float:
    """Return the mean red value of a ``w:h:x:y`` crop of the frame at ``at`` seconds."""
    argv = ["ffmpeg", "-v", "error", "-ss", str(at), "-i", str(video), "-frames:v", "1", "-vf", f"crop={box}"]
    raw = subprocess.run([*argv, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], check=True, capture_output=True).stdout
    return sum(raw[0::3]) / (len(raw) / 3)


def test_portrait_clip_is_trimmed_fitted_and_branded(clip: Callable, tmp_path: Path) -> None:
    pipeline = Pipeline(BRANDED, tmp_path / "bumpers")
    progress: list[float] = []
    out = run(pipeline, clip("portrait.mp4"), tmp_path / "job", progress)
    assert out.duration == 30
    assert_delivery_format(out.video, 2 + 30 + 2)  # intro + first 30 s + outro
    poster = ffprobe(out.poster)["streams"][0]
    assert (poster["codec_name"], poster["width"], poster["height"]) == ("mjpeg", 1280, 720)
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert any(0 < p < 0.85 for p in progress), "encoding reports progress on the way"


def test_small_landscape_clip(clip: Callable, tmp_path: Path) -> None:
    out = run(Pipeline(BRANDED, tmp_path / "bumpers"), clip("small.mp4"), tmp_path / "job")
    assert_delivery_format(out.video, 2 + 4 + 2)


def test_without_bumpers_only_the_clip(clip: Callable, tmp_path: Path) -> None:
    out = run(Pipeline(PLAIN, tmp_path / "bumpers"), clip("small.mp4"), tmp_path / "job")
    assert_delivery_format(out.video, 4)
    assert not (tmp_path / "bumpers").exists()


def test_bumpers_are_rendered_once(clip: Callable, tmp_path: Path) -> None:
    pipeline = Pipeline(BRANDED, tmp_path / "bumpers")
    run(pipeline, clip("silent.mp4"), tmp_path / "one")
    rendered = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "bumpers").iterdir()}
    assert sorted(n.split("-")[0] for n in rendered) == ["intro", "outro"]
    run(Pipeline(BRANDED, tmp_path / "bumpers"), clip("clip.mov"), tmp_path / "two")
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "bumpers").iterdir()} == rendered
    intro = next(p for p in (tmp_path / "bumpers").iterdir() if p.name.startswith("intro"))
    assert float(ffprobe(intro)["format"]["duration"]) == pytest.approx(2, abs=0.05)


def test_watermark_is_burnt_in(clip: Callable, tmp_path: Path) -> None:
    branded = run(
        Pipeline(Profile(intro_seconds=0, outro_seconds=0, watermark_image=BRANDED.watermark_image), tmp_path / "b"),
        clip("small.mp4"),
        tmp_path / "branded",
    )
    plain = run(Pipeline(PLAIN, tmp_path / "p"), clip("small.mp4"), tmp_path / "plain")
    corner = "200:50:1050:640"  # inside the logo's box at the bottom right
    assert abs(mean_red(branded.video, 1, corner) - mean_red(plain.video, 1, corner)) > 30


def test_garbage_is_not_media(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 200)
    with pytest.raises(ProbeError):
        probe(str(garbage))
