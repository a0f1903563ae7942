"""gunicorn's settings hooks for the API: warm workers, and Prometheus's multi-process mode (ops/prometheus.py).

Used as ``gunicorn --config python:deploy.gunicorn_conf``. With ``PROMETHEUS_MULTIPROC_DIR``
set, every gunicorn worker writes its samples to files there: the directory is emptied when
gunicorn starts (samples of an earlier run would be added in), and a worker's files are
marked dead when it exits, so its gauges leave the sum. Each worker makes its AWS clients
before it accepts a connection (``app/warmup.py``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

# Seconds an idle connection from nginx stays open. Longer than nginx's own keepalive_timeout
# for its upstream connections (deploy/nginx.conf.template): the side that reuses a connection
# must be the one that closes it, or nginx sends a request on a connection gunicorn is closing
# that instant and answers 502 (a POST is not retried). gunicorn's default is 2 s.
keepalive = 75


def on_starting(server: Any) -> None:
    """Start with an empty metrics directory."""
    if folder := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        shutil.rmtree(folder, ignore_errors=True)
        Path(folder).mkdir(parents=True)


def post_worker_init(worker: Any) -> None:
    """Make the worker's AWS clients before its first request (app/warmup.py)."""
    from app.warmup import warm_up

    warm_up(worker.wsgi)


def child_exit(server: Any, worker: Any) -> None:
    """Drop an exited worker's live gauges from the sum."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
