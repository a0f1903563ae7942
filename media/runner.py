"""Run one FFmpeg or ffprobe child in the sandbox, reporting progress and keeping stderr's tail."""

from __future__ import annotations

import collections
import ctypes
import re
import resource
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import IO

from media.progress import out_time_seconds
from media.sandbox import Limits, child_env

ProgressCallback = Callable[[float], None]
PR_SET_PDEATHSIG = 1
STDERR_LINES, STDERR_LINE_CHARS = 40, 400
MAX_OUTPUT_BYTES = 8 * 1024**2
# A decoder met a picture larger than ``max_pixels`` (libavutil's check, whatever the codec). FFmpeg logs it and
# carries on without the picture, exiting 0: the runner stops it at the first such line.
PICTURE_TOO_LARGE = re.compile(r"Picture size (\d+)x(\d+) (?:is invalid|exceeds)")
OUT_OF_MEMORY = "Cannot allocate memory"
CRASH_SIGNALS = {-signal.SIGSEGV, -signal.SIGABRT, -signal.SIGBUS}
# This process's running children, so that another thread can stop them (``stop_all``).
_running: set[subprocess.Popen[bytes]] = set()
_stopped: set[subprocess.Popen[bytes]] = set()
_lock = threading.Lock()


class FFmpegError(Exception):
    """FFmpeg failed. ``reason`` says why when it is one of ours, ``stderr`` holds its last lines.

    Reasons: ``stopped`` (``stop_all``), ``timeout`` (the wall limit), ``cpu`` (the CPU-time limit), ``memory`` (the
    address-space limit), ``resolution`` (a picture over ``max_pixels``), ``output`` (too much of it), ``crashed``, or
    None for FFmpeg's own errors. ``stderr`` is for the log, never for the user.
    """

    def __init__(self, argv: list[str], returncode: int | None, stderr: str, reason: str | None = None) -> None:
        self.argv, self.returncode, self.stderr, self.reason = argv, returncode, stderr, reason
        tail = stderr.strip().splitlines()[-1:] or [f"exit status {returncode}"]
        super().__init__(f"{reason}: {tail[0]}" if reason else tail[0])


# Resolved here, in the parent: the child between fork and exec must not load anything (other threads may hold locks).
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def _preexec(limits: Limits) -> Callable[[], None]:
    def setup() -> None:  # pragma: no cover - runs in the child between fork and exec
        # The kernel kills the child if the process that started it dies (even by kill -9).
        if _prctl is not None:
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if limits.memory_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        if limits.cpu_seconds:
            # Soft equal to hard: SIGKILL at the limit (FFmpeg would treat SIGXCPU as a polite stop).
            resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return setup


class _Stderr(threading.Thread):
    """Read the child's stderr: keep a bounded tail, and stop the child on a fatal line."""

    def __init__(self, stream: IO[bytes], proc: subprocess.Popen[bytes]) -> None:
        super().__init__(name="ffmpeg-stderr", daemon=True)
        self.stream, self.proc = stream, proc
        self.tail: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self.reason: str | None = None

    def run(self) -> None:
        for raw in self.stream:
            line = raw.decode("utf-8", "replace").rstrip()[:STDERR_LINE_CHARS]
            self.tail.append(line)
            if self.reason is None and PICTURE_TOO_LARGE.search(line):
                self.reason = "resolution"
                self.proc.kill()
            elif self.reason is None and OUT_OF_MEMORY in line:
                self.reason = "memory"

    def text(self) -> str:
        return "\n".join(self.tail)


def stop_all() -> int:
    """Kill every child ``run`` has going in this process; return how many.

    For a job that is cancelled or taken over: its thread may be blocked on a child that
    reports nothing (a stalled decode), so waiting for the next progress line is not enough.
    """
    with _lock:
        procs = list(_running)
        _stopped.update(procs)
    for proc in procs:
        proc.kill()
    return len(procs)


def run(
    argv: list[str], on_progress: ProgressCallback | None = None, limits: Limits | None = None, capture: bool = False
) -> str:
    """Run ``argv`` under ``limits``; return its stdout when ``capture`` (ffprobe's JSON), else "".

    Without ``capture``, stdout carries ``-progress pipe:1`` lines and ``on_progress``
    gets the seconds done as FFmpeg reports them. The child is killed when the wall
    limit passes, when a decoded picture is over ``max_pixels``, or when the caller is
    interrupted (a Celery soft time limit, a signal): no FFmpeg outlives its job.
    """
    limits = limits or Limits()
    timed_out = threading.Event()
    with subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
        preexec_fn=_preexec(limits) if sys.platform == "linux" else None,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        errors = _Stderr(proc.stderr, proc)
        errors.start()
        with _lock:
            _running.add(proc)

        def expire() -> None:
            timed_out.set()
            proc.kill()

        timer = threading.Timer(limits.wall_seconds, expire) if limits.wall_seconds else None
        if timer:
            timer.start()
        output = b""
        try:
            if capture:
                output = proc.stdout.read(MAX_OUTPUT_BYTES + 1)
                if len(output) > MAX_OUTPUT_BYTES:
                    errors.reason = "output"
                    proc.kill()
            else:
                for raw in proc.stdout:
                    seconds = out_time_seconds(raw.decode("ascii", "replace"))
                    if seconds is not None and on_progress:
                        on_progress(seconds)
            proc.wait()
        finally:
            if timer:
                timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            errors.join(timeout=5)
            with _lock:
                _running.discard(proc)
                stopped = proc in _stopped
                _stopped.discard(proc)
    if stopped:
        raise FFmpegError(argv, proc.returncode, errors.text(), "stopped")
    # A picture over the limit fails the run even if FFmpeg got to exit 0 before it was killed.
    if proc.returncode != 0 or errors.reason == "resolution":
        raise FFmpegError(argv, proc.returncode, errors.text(), _reason(proc.returncode, timed_out.is_set(), errors))
    return output.decode("utf-8", "replace")


def _reason(returncode: int, timed_out: bool, errors: _Stderr) -> str | None:
    if errors.reason in ("resolution", "output"):
        return errors.reason
    if timed_out:
        return "timeout"
    if returncode == -signal.SIGKILL:
        return "cpu"  # not killed by us: the kernel's RLIMIT_CPU
    if errors.reason == "memory" or returncode in CRASH_SIGNALS:
        return "memory" if errors.reason == "memory" else "crashed"
    return None
