"""Per-job scratch directories, and what is left of them when a process is killed."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)
PREFIX = "videoproc-job-"


def job_dir(video_id: str, base: str | None) -> tempfile.TemporaryDirectory[str]:
    """Return a scratch directory named after this process, so orphans can be recognised."""
    return tempfile.TemporaryDirectory(prefix=f"{PREFIX}{os.getpid()}-{video_id}-", dir=base)


def alive(pid: int) -> bool:
    """Return whether process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def remove_orphans(base: str | None) -> int:
    """Delete scratch directories whose process is gone; return how many."""
    removed = 0
    for path in Path(base or tempfile.gettempdir()).glob(f"{PREFIX}*"):
        try:
            pid = int(path.name[len(PREFIX) :].split("-", 1)[0])
        except ValueError:
            continue
        if not alive(pid):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    if removed:
        logger.info("orphan scratch directories removed", extra={"count": removed})
    return removed
