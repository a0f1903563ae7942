"""Run one FFmpeg command, reporting progress and keeping stderr for the error."""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable

from media.progress import out_time_seconds

ProgressCallback = Callable[[float], None]
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Have the kernel kill FFmpeg if the process that started it dies (even by kill -9)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class FFmpegError(Exception):
    """FFmpeg exited with an error; ``stderr`` holds its last lines."""

    def __init__(self, argv: list[str], returncode: int | None, stderr: str) -> None:
        self.argv, self.returncode, self.stderr = argv, returncode, stderr
        tail = stderr.strip().splitlines()[-1:] or [f"exit status {returncode}"]
        super().__init__(tail[0])


def run(
    argv: list[str],
    on_progress: ProgressCallback | None = None,
    timeout: float | None = None,
) -> None:
    """Run ``argv``; call ``on_progress(seconds_done)`` as FFmpeg reports it.

    The child is killed when ``timeout`` passes or when the caller is interrupted
    (a Celery soft time limit, a signal), so no FFmpeg outlives its job.
    """
    with (
        tempfile.TemporaryFile() as err,
        subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        ) as proc,
    ):
        timer = threading.Timer(timeout, proc.kill) if timeout else None
        if timer:
            timer.start()
        try:
            assert proc.stdout is not None
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
        if proc.returncode != 0:
            err.seek(0)
            message = err.read().decode("utf-8", "replace")
            if timeout and proc.returncode < 0:
                message += f"\nkilled after {timeout:g}s"
            raise FFmpegError(argv, proc.returncode, message)
