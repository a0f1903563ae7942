"""Per-job scratch directories, and what is left of them when a process is killed."""

from __future__ import annotations

import os
import tempfile

from ops import orphans
from ops.orphans import alive

__all__ = ["OPTIMIZE_PREFIX", "PREFIX", "alive", "job_dir", "remove_orphans", "running_jobs"]
PREFIX = "videoproc-job-"  # a video's processing job
OPTIMIZE_PREFIX = "videoproc-optimize-"  # a video's optimize stage (tasks/optimize.py): it yields to the jobs


def job_dir(video_id: str, base: str | None, prefix: str = PREFIX) -> tempfile.TemporaryDirectory[str]:
    """Return a scratch directory named after this process, so orphans can be recognised."""
    return tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}-{video_id}-", dir=base)


def remove_orphans(base: str | None) -> int:
    """Delete scratch directories whose process is gone; return how many."""
    return sum(orphans.remove_orphans(base, prefix) for prefix in (PREFIX, OPTIMIZE_PREFIX))


def running_jobs(base: str | None, prefix: str = PREFIX) -> int:
    """Return how many processing jobs on this host hold a scratch directory now (every worker sharing ``base``).

    The optimize stage's are not counted (``prefix`` counts them): it takes only what these leave.
    """
    return sum(1 for pid in orphans.owners(base, prefix) if alive(pid))
