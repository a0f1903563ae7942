"""Files and directories named after the process that made them, and removing those whose process died.

Upload spool files (``app/spool.py``) and job directories (``tasks/scratch.py``) are named
``<prefix><pid>-…``: a process killed outright can't delete its own, the next one to start does.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)


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


def owners(base: str | None, prefix: str) -> dict[int, list[Path]]:
    """Return the files and directories named ``<prefix><pid>-…`` in ``base``, by the pid that made them."""
    found: dict[int, list[Path]] = {}
    for path in Path(base or tempfile.gettempdir()).glob(f"{prefix}*"):
        try:
            pid = int(path.name[len(prefix) :].split("-", 1)[0])
        except ValueError:
            continue
        found.setdefault(pid, []).append(path)
    return found


def remove_orphans(base: str | None, prefix: str) -> int:
    """Delete files and directories named ``<prefix><pid>-…`` whose process is gone; return how many."""
    removed = 0
    for pid, paths in owners(base, prefix).items():
        if alive(pid):
            continue
        for path in paths:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed += 1
    if removed:
        logger.info("orphans removed", extra={"count": removed, "prefix": prefix})
    return removed
