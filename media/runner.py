"""Run one FFmpeg or ffprobe child in the sandbox, reporting progress and keeping stderr's tail."""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import re
import resource
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import IO

from media.jail import Jail
from media.progress import out_time_seconds
from media.sandbox import Resources, child_env

ProgressCallback = Callable[[float], None]
PR_SET_PDEATHSIG = 1
STDERR_LINES, STDERR_LINE_CHARS = 40, 400
MAX_OUTPUT_BYTES = 8 * 1024**2
# A decoder met a picture larger than ``max_pixels`` (libavutil's check, whatever the codec). FFmpeg logs it and
# carries on without the picture, exiting 0: the runner stops it at the first such line.
PICTURE_TOO_LARGE = re.compile(r"Picture size (\d+)x(\d+) (?:is invalid|exceeds)")
OUT_OF_MEMORY = "Cannot allocate memory"
# The host's scratch disk, not the file: FFmpeg says so in its own words and exits 1.
DISK_FULL = ("No space left on device", "Disk quota exceeded")
# bubblewrap's own errors, before the program runs: the jail could not be made on this host.
JAIL_FAILED = "bwrap: "
CRASH_SIGNALS = {-signal.SIGSEGV, -signal.SIGABRT, -signal.SIGBUS, -signal.SIGILL, -signal.SIGFPE}
# Whose fault an ending is. The file's: a verdict it earned under our own limits (FFmpeg's own error, a limit the
# runner set and saw reached). The host's: killed from outside (the OOM killer, an operator) or stopped by us. Not
# known yet: a crash, or the wall limit (slow may mean a busy host), to be tried once more in a fresh process.
FILE, HOST, SUSPECT = "file", "host", "suspect"
BLAME: dict[str | None, str] = {
    None: FILE,
    "resolution": FILE,
    "output": FILE,
    "cpu": FILE,
    "memory": FILE,
    "killed": HOST,
    "stopped": HOST,
    "disk": HOST,
    "jail": HOST,
    "timeout": SUSPECT,
    "crashed": SUSPECT,
}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# The kernel's RLIMIT_CPU kill comes at the limit, give or take a tick; a SIGKILL well before it came from outside.
CPU_SLACK_SECONDS = 0.5
# This process's running children and who started them (``owned``), so that another thread can stop one job's.
_running: dict[subprocess.Popen[bytes], str | None] = {}
_stopped: set[subprocess.Popen[bytes]] = set()
_lock = threading.Lock()
_owner = threading.local()


class FFmpegError(Exception):
    """FFmpeg failed. ``reason`` says why when it is one of ours, ``stderr`` holds its last lines.

    Reasons: ``stopped`` (``stop``), ``timeout`` (the wall limit), ``cpu`` (the CPU-time limit, its CPU time seen
    at it), ``memory`` (the address-space limit), ``resolution`` (a picture over ``max_pixels``), ``output`` (too
    much of it), ``killed`` (SIGKILL from outside: the OOM killer, an operator), ``disk`` (the scratch disk is full),
    ``crashed``, ``jail`` (bubblewrap could not make the jail here), or None for FFmpeg's own errors. ``blame``
    says whose fault that is (``BLAME``). ``stderr`` is for the log, never for the user.
    """

    def __init__(self, argv: list[str], returncode: int | None, stderr: str, reason: str | None = None) -> None:
        self.argv, self.returncode, self.stderr, self.reason = argv, returncode, stderr, reason
        tail = stderr.strip().splitlines()[-1:] or [f"exit status {returncode}"]
        super().__init__(f"{reason}: {tail[0]}" if reason else tail[0])

    @property
    def blame(self) -> str:
        return BLAME.get(self.reason, FILE)


# Resolved here, in the parent: the child between fork and exec must not load anything (other threads may hold locks).
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def _preexec(limits: Resources) -> Callable[[], None]:
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
        self.first: str | None = None

    def run(self) -> None:
        for raw in self.stream:
            line = raw.decode("utf-8", "replace").rstrip()[:STDERR_LINE_CHARS]
            if self.first is None:
                self.first = line
            self.tail.append(line)
            if self.reason is None and PICTURE_TOO_LARGE.search(line):
                self.reason = "resolution"
                kill(self.proc)
            elif self.reason is None and OUT_OF_MEMORY in line:
                self.reason = "memory"
            elif self.reason is None and any(words in line for words in DISK_FULL):
                self.reason = "disk"

    def text(self) -> str:
        return "\n".join(self.tail)


@contextlib.contextmanager
def owned(owner: str) -> Iterator[None]:
    """Mark the children this thread starts meanwhile as ``owner``'s, for ``stop``."""
    previous = getattr(_owner, "name", None)
    _owner.name = owner
    try:
        yield
    finally:
        _owner.name = previous


def stop(owner: str) -> int:
    """Kill the children that ``owner``'s thread has going (``owned``); return how many.

    For a job that is cancelled or taken over: its thread may be blocked on a child that
    reports nothing (a stalled decode), so waiting for the next progress line is not enough.
    Another job's children, in this process now or later, are never touched.
    """
    with _lock:
        procs = [proc for proc, who in _running.items() if who == owner]
        _stopped.update(procs)
    for proc in procs:
        kill(proc)
    return len(procs)


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``proc`` and every descendant it has now.

    Killing the child alone is not enough for a tree that ``pause`` stopped: in a jail, a
    bubblewrap stopped before it asked to die with its parent would outlive it, stopped for
    good, holding the pipes the runner reads until EOF. SIGKILL ends a stopped process too.
    """
    descendants = _tree(proc.pid)[1:] if proc.returncode is None else []
    proc.kill()
    for pid in descendants:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _tree(pid: int) -> list[int]:
    """Return ``pid`` and its descendants (in a jail FFmpeg is bubblewrap's grandchild)."""
    try:
        children = [int(c) for path in os.scandir(f"/proc/{pid}/task") for c in _children(path.path)]
    except OSError:
        return [pid]
    return [pid, *(d for child in children for d in _tree(child))]


def _children(task: str) -> list[str]:
    try:
        with open(f"{task}/children") as listing:
            return listing.read().split()
    except OSError:
        return []


def pause(owner: str, paused: bool) -> int:
    """Stop (SIGSTOP) or continue (SIGCONT) the children ``owner``'s thread has going, and theirs; return how many.

    For work that yields the CPU to other jobs on the host (the optimize stage): a stopped FFmpeg
    keeps its memory and its place and goes on where it was. Its wall-time limit still runs.
    """
    with _lock:
        roots = [proc.pid for proc, who in _running.items() if who == owner and proc.returncode is None]
    count = 0
    for pid in (p for root in roots for p in _tree(root)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP if paused else signal.SIGCONT)
            count += 1
    return count


def _cpu_seconds(pid: int) -> float | None:
    """Return the CPU time of an exited, not yet reaped child (its zombie's /proc entry); None when unknown.

    Its reaped children's count too: in a jail, FFmpeg is bubblewrap's child.
    """
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # wait for the exit, leave the zombie for Popen
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        return sum(int(field) for field in fields[11:15]) / CLOCK_TICKS  # utime, stime, cutime, cstime
    except (OSError, ValueError, IndexError):
        return None


def _status(returncode: int, jailed: bool) -> int:
    """Return the child's status as Popen gives it: bubblewrap reports a signal as 128 + its number."""
    if jailed and 128 < returncode < 128 + signal.NSIG:
        return -(returncode - 128)
    return returncode


def run(
    argv: list[str],
    on_progress: ProgressCallback | None = None,
    limits: Resources | None = None,
    capture: bool = False,
    jail: Jail | None = None,
) -> str:
    """Run ``argv`` under ``limits``, inside ``jail`` when given; return its stdout when ``capture``, else "".

    Without ``capture``, stdout carries ``-progress pipe:1`` lines and ``on_progress``
    gets the seconds done as FFmpeg reports them. The child is killed when the wall
    limit passes, when a decoded picture is over ``max_pixels``, or when the caller is
    interrupted (a Celery soft time limit, a signal): no FFmpeg outlives its job.
    """
    limits = limits or Resources()
    timed_out = threading.Event()
    with subprocess.Popen(
        jail.command(argv) if jail else argv,
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
            _running[proc] = getattr(_owner, "name", None)

        def expire() -> None:
            timed_out.set()
            kill(proc)

        timer = threading.Timer(limits.wall_seconds, expire) if limits.wall_seconds else None
        if timer:
            timer.start()
        output, cpu = b"", None
        try:
            if capture:
                output = proc.stdout.read(MAX_OUTPUT_BYTES + 1)
                if len(output) > MAX_OUTPUT_BYTES:
                    errors.reason = "output"
                    kill(proc)
            else:
                for raw in proc.stdout:
                    seconds = out_time_seconds(raw.decode("ascii", "replace"))
                    if seconds is not None and on_progress:
                        on_progress(seconds)
            cpu = _cpu_seconds(proc.pid)
            proc.wait()
        finally:
            if timer:
                timer.cancel()
            if proc.poll() is None:
                kill(proc)
                proc.wait()
            errors.join(timeout=5)
            with _lock:
                _running.pop(proc, None)
                stopped = proc in _stopped
                _stopped.discard(proc)
    returncode = _status(proc.returncode, jail is not None)
    if jail is not None and returncode == 1 and (errors.first or "").startswith(JAIL_FAILED):
        # bubblewrap could not make the jail (or start the program in it): the host's fault, never the file's.
        raise FFmpegError(argv, returncode, errors.text(), "jail")
    if stopped:
        raise FFmpegError(argv, returncode, errors.text(), "stopped")
    # A picture over the limit fails the run even if FFmpeg got to exit 0 before it was killed.
    if returncode != 0 or errors.reason == "resolution":
        reason = _reason(returncode, timed_out.is_set(), errors, cpu, limits.cpu_seconds)
        raise FFmpegError(argv, returncode, errors.text(), reason)
    return output.decode("utf-8", "replace")


def _reason(
    returncode: int, timed_out: bool, errors: _Stderr, cpu: float | None = None, cpu_limit: int | None = None
) -> str | None:
    """Return why the child failed, by cause: what we did to it, what it met, or who else stopped it."""
    if errors.reason in ("resolution", "output"):
        return errors.reason
    if timed_out:
        return "timeout"
    if returncode == -signal.SIGKILL:
        # The kernel kills at RLIMIT_CPU; any other SIGKILL is from outside (the OOM killer, an operator).
        reached = cpu_limit is not None and cpu is not None and cpu >= cpu_limit - CPU_SLACK_SECONDS
        return "cpu" if reached else "killed"
    if errors.reason in ("memory", "disk"):
        return errors.reason
    return "crashed" if returncode in CRASH_SIGNALS else None
