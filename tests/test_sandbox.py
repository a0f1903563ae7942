"""The FFmpeg sandbox: pure option building, and the runner's limits on real children."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

import pytest

from domain import media as media_settings
from media import probe as media_probe
from media import runner
from media.probe import MediaInfo, ProbeError, frame_rate, parse_probe
from media.sandbox import MiB, Resources, Sandbox, UnknownContainer, child_env, demuxers, share
from media.validate import Limits, MediaRejected, check, rejection
from tests.conftest import wait_for


class TestOptions:
    def test_containers_map_to_demuxers_once(self) -> None:
        assert demuxers(["mp4", "mov", "mkv", "avi"]) == ("mov", "matroska", "avi")
        with pytest.raises(UnknownContainer, match="hls"):
            demuxers(["mp4", "hls"])

    def test_probe_options_whitelist_demuxers_and_the_file_protocol(self) -> None:
        options = Sandbox(formats=("mp4", "mov"), max_pixels=100, threads=3).input_options()
        assert options == {
            "format_whitelist": "mov",
            "protocol_whitelist": "file",
            "enable_drefs": 0,
            "max_pixels": 100,
            "threads": 4,  # libavcodec's cores + 1
        }

    def test_drefs_option_only_when_mov_is_the_only_demuxer(self) -> None:
        options = Sandbox(formats=("mp4", "mkv")).input_options()
        assert options["format_whitelist"] == "mov,matroska"
        assert "enable_drefs" not in options and "f" not in options

    def test_encode_forces_the_probed_demuxer(self) -> None:
        options = Sandbox(formats=("mp4", "mkv")).input_options("mkv")
        assert (options["f"], options["format_whitelist"]) == ("matroska", "matroska")
        assert Sandbox().input_options("mov")["enable_drefs"] == 0

    def test_limits_scale_with_the_content(self) -> None:
        box = Sandbox(encode_memory=1000 * MiB, timeout_base=60, timeout_per_second=10, cpu_per_second=20)
        assert box.encode_limits(30) == Resources(memory_bytes=1000 * MiB, cpu_seconds=660, wall_seconds=360)
        assert Sandbox(probe_memory=5, probe_seconds=7.5).probe_limits() == Resources(5, 7, 7.5)

    def test_settings(self) -> None:
        from config import load_settings

        s = load_settings({"APP_ENV": "testing", "FFMPEG_THREADS": "3", "VIDEO_ALLOWED_FORMATS": "mp4,mkv"})
        box = media_settings.confinement(s)
        assert (box.threads, box.demuxers, box.max_pixels) == (3, ("mov", "matroska"), 7680 * 4320)
        assert (box.probe_memory, box.encode_memory) == (512 * MiB, 1536 * MiB)
        assert box.for_jobs(5) is box  # a fixed FFMPEG_THREADS is the operator's

    def test_threads_share_the_cores_among_the_running_jobs(self) -> None:
        from config import load_settings

        assert [share(jobs, cores=4) for jobs in (1, 2, 3, 4, 8)] == [4, 2, 1, 1, 1]
        assert share(1, cores=64) == 16 and share(0, cores=2) == 2
        box = media_settings.confinement(load_settings({"APP_ENV": "testing"}))
        assert box.share_cores and box.threads == share(1)  # the probe's and the bumpers'
        assert box.for_jobs(64).threads == 1 and box.for_jobs(1).threads == share(1)
        assert box.for_jobs(64).output_options() == {"threads": 1}
        assert box.for_jobs(64).input_options()["threads"] == 1 and Sandbox(threads=2).input_options()["threads"] == 3

    def test_child_environment_carries_no_secrets(self) -> None:
        env = child_env({"PATH": "/bin", "AWS_SECRET_ACCESS_KEY": "x", "SECRET_KEY": "y", "http_proxy": "z"})
        assert env == {"PATH": "/bin", "MALLOC_ARENA_MAX": "2"}


class TestRealLimits:
    def test_child_sees_only_the_safe_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-leak")
        code = "import os, json; print(json.dumps(sorted(os.environ)))"
        out = runner.run([sys.executable, "-c", code], capture=True)
        assert "AWS_SECRET_ACCESS_KEY" not in out and "MALLOC_ARENA_MAX" in out

    def test_memory_limit_stops_a_greedy_child(self) -> None:
        greedy = "b = bytearray(600 * 1024 * 1024); print(len(b))"
        with pytest.raises(runner.FFmpegError) as caught:
            runner.run([sys.executable, "-c", greedy], limits=Resources(memory_bytes=300 * MiB), capture=True)
        assert caught.value.returncode != 0 and "MemoryError" in caught.value.stderr
        assert runner.run([sys.executable, "-c", greedy], limits=Resources(memory_bytes=900 * MiB), capture=True)

    def test_cpu_limit_kills(self) -> None:
        with pytest.raises(runner.FFmpegError) as caught:
            runner.run([sys.executable, "-c", "while True: pass"], limits=Resources(cpu_seconds=1, wall_seconds=30))
        assert caught.value.reason == "cpu"

    def test_wall_limit_kills(self) -> None:
        with pytest.raises(runner.FFmpegError) as caught:
            runner.run([sys.executable, "-c", "import time; time.sleep(30)"], limits=Resources(wall_seconds=0.5))
        assert caught.value.reason == "timeout"

    def test_a_kill_from_outside_is_the_hosts_fault_not_the_cpu_limit(self) -> None:
        # The OOM killer, an operator, a container limit: SIGKILL, as the kernel's RLIMIT_CPU sends, long before it.
        script = "import os, signal, time; time.sleep(0.2); os.kill(os.getpid(), signal.SIGKILL)"
        with pytest.raises(runner.FFmpegError) as caught:
            runner.run([sys.executable, "-c", script], limits=Resources(cpu_seconds=30, wall_seconds=30))
        assert (caught.value.reason, caught.value.blame) == ("killed", runner.HOST)

    def test_a_crash_is_not_yet_the_files_fault(self) -> None:
        script = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
        with pytest.raises(runner.FFmpegError) as caught:
            runner.run([sys.executable, "-c", script])
        assert (caught.value.reason, caught.value.blame) == ("crashed", runner.SUSPECT)

    @pytest.mark.parametrize(
        ("reason", "blame"),
        [
            *[(None, "file"), ("cpu", "file"), ("memory", "file"), ("resolution", "file"), ("output", "file")],
            *[("killed", "host"), ("stopped", "host"), ("disk", "host")],
            *[("timeout", "suspect"), ("crashed", "suspect")],
        ],
    )
    def test_blame_by_cause(self, reason: str | None, blame: str) -> None:
        assert runner.FFmpegError(["ffmpeg"], 1, "", reason).blame == blame

    def test_a_full_scratch_disk_is_the_hosts_fault(self) -> None:
        script = "import sys; print('out.mp4: No space left on device', file=sys.stderr); sys.exit(1)"
        with pytest.raises(runner.FFmpegError) as caught:
            runner.run([sys.executable, "-c", script])
        assert (caught.value.reason, caught.value.blame) == ("disk", runner.HOST)

    @pytest.mark.parametrize(
        ("reasons", "repeated", "blame"),
        [(["crashed", "crashed"], True, "file"), (["timeout", "crashed"], False, "suspect")],
    )
    def test_a_suspect_probe_is_tried_once_more_and_the_same_again_is_the_files(
        self, monkeypatch: pytest.MonkeyPatch, reasons: list[str], repeated: bool, blame: str
    ) -> None:
        calls: list[str] = []

        def failing(path: str, sandbox: object = None, relay: object = None) -> MediaInfo:
            calls.append(path)
            raise ProbeError("ffprobe failed", reasons[len(calls) - 1])

        monkeypatch.setattr(media_probe, "probe", failing)
        with pytest.raises(ProbeError) as caught:
            media_probe.probe_twice("clip.mp4")
        assert len(calls) == 2 and (caught.value.repeated, caught.value.blame) == (repeated, blame)

    def test_a_probe_killed_from_outside_is_not_tried_again_on_the_spot(self, monkeypatch: pytest.MonkeyPatch) -> None:
        calls: list[str] = []

        def killed(path: str, sandbox: object = None, relay: object = None) -> MediaInfo:
            calls.append(path)
            raise ProbeError("ffprobe failed", "killed")

        monkeypatch.setattr(media_probe, "probe", killed)
        with pytest.raises(ProbeError) as caught:
            media_probe.probe_twice("clip.mp4")
        assert len(calls) == 1 and caught.value.blame == runner.HOST

    def test_stop_kills_only_its_owners_child(self) -> None:
        failures: dict[str, runner.FFmpegError] = {}

        def silent(owner: str) -> None:
            try:
                with runner.owned(owner):
                    runner.run([sys.executable, "-c", "import time; time.sleep(30)"], limits=Resources(wall_seconds=20))
            except runner.FFmpegError as exc:
                failures[owner] = exc

        threads = {owner: threading.Thread(target=silent, args=(owner,)) for owner in ("job-a", "job-b")}
        for thread in threads.values():
            thread.start()
        wait_for(lambda: len(runner._running) == 2, timeout=10, interval=0.01)
        assert runner.stop("job-a") == 1
        threads["job-a"].join(timeout=10)
        assert failures["job-a"].reason == "stopped" and "job-b" not in failures
        assert list(runner._running.values()) == ["job-b"]  # the other job's child runs on
        assert runner.stop("job-a") == 0  # a late stop of a job that is over touches nothing
        assert runner.stop("job-b") == 1
        threads["job-b"].join(timeout=10)
        assert failures["job-b"].reason == "stopped" and runner._running == {}

    @pytest.mark.parametrize("ending", ["stopped", "timeout"])
    def test_a_paused_tree_is_killed_whole(self, ending: str) -> None:
        """A stopped grandchild (a jail's bubblewrap stopped before it asked to die with its parent) ends too."""
        tree = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])"
        failures: list[runner.FFmpegError] = []

        def paused() -> None:
            with runner.owned("job-p"), pytest.raises(runner.FFmpegError) as caught:
                runner.run([sys.executable, "-c", f"{tree}; time.sleep(60)"], limits=Resources(wall_seconds=3))
            failures.append(caught.value)

        thread = threading.Thread(target=paused)
        thread.start()
        wait_for(lambda: [p for p in runner._running if len(runner._tree(p.pid)) == 2], timeout=10, interval=0.01)
        (child,) = runner._running
        grandchild = runner._tree(child.pid)[1]
        try:
            assert runner.pause("job-p", True) == 2
            if ending == "stopped":
                assert runner.stop("job-p") == 1
            thread.join(timeout=15)
            assert not thread.is_alive(), "the stopped grandchild holds the pipe the runner reads"
            assert failures[0].reason == ending
            wait_for(lambda: not os.path.exists(f"/proc/{grandchild}"), timeout=5, interval=0.01)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(grandchild, signal.SIGKILL)
            thread.join(timeout=15)

    def test_stderr_is_bounded(self) -> None:
        noisy = "import sys\nfor i in range(100000): print('x' * 1000, i, file=sys.stderr)\nsys.exit(1)"
        with pytest.raises(runner.FFmpegError) as caught:
            runner.run([sys.executable, "-c", noisy])
        assert len(caught.value.stderr) <= runner.STDERR_LINES * (runner.STDERR_LINE_CHARS + 1)

    def test_picture_over_the_limit_stops_the_child_at_once(self) -> None:
        script = (
            "import sys, time; print('Picture size 8192x8192 is invalid', file=sys.stderr, flush=True); time.sleep(30)"
        )
        with pytest.raises(runner.FFmpegError) as caught:
            runner.run([sys.executable, "-c", script], limits=Resources(wall_seconds=20))
        assert caught.value.reason == "resolution"


def info(**kw: object) -> MediaInfo:
    base = {"container": "mp4", "duration": 20.0, "width": 1920, "height": 1080, "has_video": True, "has_audio": True}
    return MediaInfo(**{**base, "fps": 30.0, "frames": 600, "streams": 2, **kw})  # type: ignore[arg-type]


class TestWhatNoRealClipHas:
    @pytest.mark.parametrize(
        ("changes", "code"),
        [
            ({"streams": 40}, "too_many_streams"),
            ({"fps": 100_000.0}, "frame_rate_out_of_bounds"),
            ({"frames": 2_000_000}, "too_many_frames"),
            ({"width": 7680, "height": 4320, "fps": 120.0}, "pixel_rate_out_of_bounds"),
        ],
    )
    def test_refused(self, changes: dict, code: str) -> None:
        with pytest.raises(MediaRejected) as caught:
            check(info(**changes), Limits())
        assert (caught.value.code, caught.value.kind) == (code, "bounds")

    def test_a_stream_no_picture_was_decoded_from_is_not_a_video(self) -> None:
        # An index bomb under the memory limit: ffprobe drops the index and can't decode a frame.
        with pytest.raises(MediaRejected) as caught:
            check(info(pixel_format=None), Limits())
        assert (caught.value.code, caught.value.kind) == ("not_a_video", "format")

    def test_real_clips_pass(self) -> None:
        check(info(), Limits())
        check(info(width=3840, height=2160, fps=60.0, frames=1800), Limits())
        check(info(width=1280, height=720, fps=240.0, frames=2400), Limits())

    def test_rates_and_counts_from_ffprobe(self) -> None:
        assert frame_rate("30000/1001") == pytest.approx(29.97, abs=0.01)
        assert frame_rate("0/0") == frame_rate(None) == frame_rate("x/y") == 0
        data = {
            "format": {"format_name": "mov,mp4,m4a,3gp,3g2,mj2", "duration": "20"},
            "streams": [{"codec_type": "video", "width": 7680, "height": 4320, "avg_frame_rate": "100000/1"}],
        }
        parsed = parse_probe(data)
        assert (parsed.fps, parsed.frames, parsed.streams) == (100_000, 2_000_000, 1)
        data["streams"][0] |= {"avg_frame_rate": "0/0", "r_frame_rate": "25/1", "nb_frames": "77"}
        assert (parse_probe(data).fps, parse_probe(data).frames) == (25, 77)


class TestRejections:
    @pytest.mark.parametrize(
        ("reason", "kind", "code"),
        [
            ("format", "format", "format_not_allowed"),
            ("resolution", "bounds", "resolution_out_of_bounds"),
            ("memory", "bounds", "too_complex"),
            ("cpu", "bounds", "too_complex"),
            ("timeout", "bounds", "too_complex"),
            (None, "format", "not_a_video"),
        ],
    )
    def test_messages_never_carry_ffmpeg_output(self, reason: str | None, kind: str, code: str) -> None:
        error = ProbeError("/tmp/upload-abc: Invalid data found", reason, "/tmp/upload-abc: Invalid data found")
        refused = rejection(error, Limits())
        assert (refused.kind, refused.code) == (kind, code)
        assert "/tmp" not in refused.message and "Invalid data" not in refused.message
