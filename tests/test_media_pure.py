"""The pure half of the pipeline: probe parsing, validation, profiles, commands, progress."""

from __future__ import annotations

import itertools

import pytest

from config import ConfigError, load_settings
from domain import media as media_settings
from media import commands
from media.probe import MediaInfo, container_name, parse_probe
from media.profile import Profile
from media.progress import out_time_seconds, percent
from media.validate import Limits, MediaRejected, check


def probe_json(fmt: str = "mov,mp4,m4a,3gp,3g2,mj2", brand: str = "isom", **video: object) -> dict:
    stream = {"codec_type": "video", "codec_name": "h264", "width": 1920, "height": 1080, "avg_frame_rate": "30/1"}
    stream["pix_fmt"] = "yuv420p"
    stream.update(video)
    return {
        "format": {"format_name": fmt, "duration": "42.5", "tags": {"major_brand": brand}},
        "streams": [stream, {"codec_type": "audio", "codec_name": "aac"}],
    }


def info(**kw: object) -> MediaInfo:
    base = {"container": "mp4", "duration": 10.0, "width": 1280, "height": 720, "has_video": True, "has_audio": True}
    return MediaInfo(**{**base, **kw})  # type: ignore[arg-type]


class TestProbe:
    def test_parses_format_streams_and_duration(self) -> None:
        parsed = parse_probe(probe_json())
        assert parsed == MediaInfo("mp4", 42.5, 1920, 1080, True, True, "h264", fps=30.0, frames=1275, streams=2)

    @pytest.mark.parametrize(
        ("fmt", "brand", "expected"),
        [
            ("mov,mp4,m4a,3gp,3g2,mj2", "isom", "mp4"),
            ("mov,mp4,m4a,3gp,3g2,mj2", "mp42", "mp4"),
            ("mov,mp4,m4a,3gp,3g2,mj2", "qt  ", "mov"),
            ("matroska,webm", None, "mkv"),
            ("png_pipe", None, "png_pipe"),
        ],
    )
    def test_container_names(self, fmt: str, brand: str | None, expected: str) -> None:
        assert container_name(fmt, brand) == expected

    def test_rotation_swaps_display_size(self) -> None:
        rotated = parse_probe(probe_json(side_data_list=[{"rotation": -90}]))
        legacy = parse_probe(probe_json(tags={"rotate": "270"}))
        assert (rotated.width, rotated.height) == (1080, 1920)
        assert (legacy.width, legacy.height) == (1080, 1920)

    def test_cover_art_is_not_a_video(self) -> None:
        data = probe_json(disposition={"attached_pic": 1})
        assert parse_probe(data).has_video is False

    def test_audio_only(self) -> None:
        data = {"format": {"format_name": "mp3", "duration": "3"}, "streams": [{"codec_type": "audio"}]}
        parsed = parse_probe(data)
        assert (parsed.has_video, parsed.has_audio, parsed.width) == (False, True, 0)


class TestValidate:
    def test_accepts_within_bounds(self) -> None:
        check(info(), Limits())

    @pytest.mark.parametrize(
        ("media", "code", "kind"),
        [
            (info(has_video=False), "no_video_stream", "format"),
            (info(container="mkv"), "format_not_allowed", "format"),
            (info(duration=0.5), "duration_out_of_bounds", "bounds"),
            (info(duration=1801), "duration_out_of_bounds", "bounds"),
            (info(width=160, height=120), "resolution_out_of_bounds", "bounds"),
            (info(width=8192, height=4320), "resolution_out_of_bounds", "bounds"),
        ],
    )
    def test_rejects(self, media: MediaInfo, code: str, kind: str) -> None:
        with pytest.raises(MediaRejected) as caught:
            check(media, Limits())
        assert (caught.value.code, caught.value.kind) == (code, kind)

    def test_portrait_compares_long_side_to_long_side(self) -> None:
        course = Limits(min_duration=20, max_duration=60, min_width=1920, min_height=1080)
        check(info(width=1080, height=1920, duration=30), course)
        with pytest.raises(MediaRejected, match="Resolution"):
            check(info(width=1280, height=720, duration=30), course)
        with pytest.raises(MediaRejected, match="Duration"):
            check(info(width=1920, height=1080, duration=10), course)

    def test_a_container_with_no_demuxer_stops_the_process(self) -> None:
        settings = load_settings({"APP_ENV": "testing", "VIDEO_ALLOWED_FORMATS": "mp4,hls"})
        with pytest.raises(ConfigError, match="VIDEO_ALLOWED_FORMATS: no demuxer known for container 'hls'"):
            media_settings.confinement(settings)

    def test_limits_from_settings(self) -> None:
        env = {"VIDEO_ALLOWED_FORMATS": "mp4", "VIDEO_MIN_DURATION": "20", "VIDEO_MAX_DURATION": "60"}
        env |= {"VIDEO_MIN_WIDTH": "1920", "VIDEO_MIN_HEIGHT": "1080", "VIDEO_MAX_WIDTH": "3840"}
        env |= {"VIDEO_MAX_HEIGHT": "2160", "VIDEO_MAX_FPS": "120", "VIDEO_MAX_FRAMES": "7200"}
        s = load_settings({**env, "VIDEO_MAX_PIXEL_RATE": "1e9", "VIDEO_MAX_STREAMS": "4", "SECRET_KEY": "x"})
        assert media_settings.limits(s) == Limits(("mp4",), 20, 60, 1920, 1080, 3840, 2160, 120, 7200, 1e9, 4)


class TestProfile:
    def test_bumpers_may_last_five_seconds_together(self) -> None:
        Profile(intro_seconds=2.5, outro_seconds=2.5)
        with pytest.raises(ValueError, match="at most 5s"):
            Profile(intro_seconds=3, outro_seconds=2.5)

    def test_odd_size_rejected(self) -> None:
        with pytest.raises(ValueError, match="even"):
            Profile(width=1279)

    def test_fingerprint_changes_with_encoding(self) -> None:
        assert Profile().fingerprint() == Profile().fingerprint()
        assert Profile().fingerprint() != Profile(crf=20).fingerprint()


class TestCommands:
    profile = Profile(watermark_image="logo.png")

    def test_encode_is_one_pass_with_trim_fit_watermark_and_no_audio(self) -> None:
        argv = commands.encode_command("in.mov", "out.mp4", self.profile)
        assert argv[0] == "ffmpeg"
        assert argv[argv.index("-t") + 1] == "30.0"
        assert argv.index("-t") < argv.index("in.mov")  # an input option: stop reading after 30 s
        graph = argv[argv.index("-filter_complex") + 1]
        assert "scale=1280:720" in graph and "force_original_aspect_ratio=decrease" in graph
        assert "pad=1280:720:(ow-iw)/2:(oh-ih)/2" in graph
        assert "setsar=1" in graph and "fps=30" in graph and "overlay=" in graph
        assert "-an" in argv and "-sn" in argv
        pairs = set(itertools.pairwise(argv))
        assert {("-vcodec", "libx264"), ("-pix_fmt", "yuv420p"), ("-movflags", "+faststart")} <= pairs
        assert ("-progress", "pipe:1") in pairs
        assert argv.count("-i") == 2  # the clip and the logo: one encode

    def test_without_watermark_one_input(self) -> None:
        argv = commands.encode_command("in.mp4", "out.mp4", Profile())
        assert argv.count("-i") == 1 and "overlay" not in " ".join(argv)

    def test_the_poster_comes_from_the_same_decode(self) -> None:
        argv = commands.encode_command("in.mp4", "body.mp4", self.profile, poster=("p.jpg", 1.0))
        graph = argv[argv.index("-filter_complex") + 1]
        assert argv.count("-i") == 2 and "split=2" in graph and "trim=end=1.05:start=1.0" in graph
        assert argv[argv.index("p.jpg") - 2 : argv.index("p.jpg")] == ["-vframes", "1"]
        assert argv.index("body.mp4") < argv.index("p.jpg")  # the video is the first output: -progress follows it

    def test_bumper_shares_the_encoder_settings(self) -> None:
        def encoder(argv: list[str]) -> dict[str, str]:
            keys = ("-vcodec", "-pix_fmt", "-profile:v", "-crf", "-preset", "-r", "-g", "-video_track_timescale")
            return {k: argv[argv.index(k) + 1] for k in keys}

        clip = commands.encode_command("in.mp4", "body.mp4", self.profile)
        bumper = commands.bumper_command("intro.png", "intro.mp4", 2, self.profile)
        assert encoder(clip) == encoder(bumper)
        assert ("-loop", "1") in set(itertools.pairwise(bumper))

    def test_concat_copies_streams(self) -> None:
        argv = commands.concat_command("list.txt", "out.mp4")
        assert argv[argv.index("-f") + 1] == "concat" and argv[argv.index("-c") + 1] == "copy"

    def test_concat_list_quotes_paths(self) -> None:
        assert commands.concat_list(["/a/b.mp4", "/it's.mp4"]) == "file '/a/b.mp4'\nfile '/it'\\''s.mp4'\n"

    def test_poster_takes_one_frame(self) -> None:
        argv = commands.poster_command("v.mp4", "p.jpg", 3.5)
        assert argv[argv.index("-ss") + 1] == "3.500" and argv[argv.index("-vframes") + 1] == "1"


class TestProgress:
    @pytest.mark.parametrize(
        ("line", "seconds"),
        [
            ("out_time_us=1500000\n", 1.5),
            ("out_time_ms=2000000", 2.0),
            ("out_time=00:01:02.500000", 62.5),
            ("out_time_us=N/A", None),
            ("frame=10", None),
            ("progress=end", None),
            ("garbage", None),
        ],
    )
    def test_out_time(self, line: str, seconds: float | None) -> None:
        assert out_time_seconds(line) == seconds

    def test_percent_clamps(self) -> None:
        assert [percent(0, 30), percent(15, 30), percent(45, 30), percent(1, 0)] == [0, 50, 100, 0]
