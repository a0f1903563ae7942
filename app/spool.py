"""Upload spool files: named after the process that wrote them, removed on every path.

A request's file parts go to named temporary files, deleted when the request closes.
A web process killed mid-upload can't delete its own; the next web process to start
removes every spool file whose process is gone.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO

from flask import Flask, Request

from app.extensions import get_settings

logger = logging.getLogger(__name__)
SPOOL_PREFIX = "videoproc-upload-"


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


class UploadRequest(Request):
    """A request whose file parts go straight to a named temporary file on disk.

    Werkzeug would keep small parts in memory; a named file lets ffprobe read the
    upload where it lies, and the web process never holds a whole video in memory.
    How many parts a request may have is ``MAX_FORM_PARTS``.
    """

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        return tempfile.NamedTemporaryFile(
            "wb+", dir=get_settings().UPLOAD_TMP_DIR, prefix=f"{SPOOL_PREFIX}{os.getpid()}-"
        )


def init_app(app: Flask) -> None:
    """Spool uploads to disk, and remove what dead web processes left behind."""
    app.request_class = UploadRequest
    remove_orphans(get_settings(app).UPLOAD_TMP_DIR, SPOOL_PREFIX)
