"""Upload spool files: named after the process that wrote them, removed on every path.

A request's file parts go to named temporary files, deleted when the request closes.
A web process killed mid-upload can't delete its own; the next web process to start
removes every spool file whose process is gone.
"""

from __future__ import annotations

import os
import tempfile
from typing import IO

from flask import Flask, Request

from domain.extensions import get_settings
from ops.orphans import remove_orphans

SPOOL_PREFIX = "videoproc-upload-"


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
