"""Per-job scratch directories, and what is left of them when a process is killed."""

from __future__ import annotations

import os
import tempfile

from ops import orphans
from ops.orphans import alive

__all__ = ["PREFIX", "alive", "job_dir", "remove_orphans", "running_jobs"]
PREFIX = "videoproc-job-"


def job_dir(video_id: str, base: str | None) -> tempfile.TemporaryDirectory[str]:
    """Return a scratch directory named after this process, so orphans can be recognised."""
    return tempfile.TemporaryDirectory(prefix=f"{PREFIX}{os.getpid()}-{video_id}-", dir=base)


def remove_orphans(base: str | None) -> int:
    """Delete scratch directories whose process is gone; return how many."""
    return orphans.remove_orphans(base, PREFIX)


def running_jobs(base: str | None) -> int:
    """Return how many jobs on this host hold a scratch directory now (every worker sharing ``base``)."""
    return sum(1 for pid in orphans.owners(base, PREFIX) if alive(pid))
