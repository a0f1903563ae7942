"""The worker's entry point: build the Flask app and expose its Celery app as ``app``."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from typing import Any

from prometheus_client import values

# The pool's processes write their samples to files that the main process's metrics port adds
# up (ops/prometheus.py): a fresh directory per start. prometheus_client picks its storage when
# it is imported, and Celery's command line may have imported it already (Flower's plugin), so
# the multi-process storage is set here, before any metric exists (docs/upstream.md, patch 8).
# The process that made the directory removes it when it exits (every `celery` command made one).
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _samples = tempfile.mkdtemp(prefix="videoproc-metrics-")
    _maker = os.getpid()

    @atexit.register
    def _remove_samples() -> None:
        if os.getpid() == _maker:  # not a forked pool process
            shutil.rmtree(_samples, ignore_errors=True)


values.ValueClass = values.MultiProcessValue()

from billiard.exceptions import WorkerLostError
from celery.signals import (
    celeryd_init,
    setup_logging,
    task_retry,
    task_revoked,
    worker_init,
    worker_process_init,
    worker_shutdown,
)

from celeryconfig import OPTIMIZE_TASK, PROCESS_TASK
from domain import jobs, optimize
from domain.extensions import db, get_settings
from domain.runtime import create_runtime
from domain.storage import get_storage
from ops import logs, prometheus
from tasks import instance, monitoring, sqs, visibility
from tasks.scratch import remove_orphans

flask_app = create_runtime(__name__)
app = celery_app = flask_app.extensions["celery"]
settings = get_settings(flask_app)
celery_app.steps["consumer"].add(visibility.make_step(settings))
celery_app.steps["consumer"].add(instance.make_step(settings))
monitoring.install()


@setup_logging.connect
def _logging(loglevel: str | int | None = None, **_: Any) -> None:
    """Log worker and task records as key=value lines too (instead of Celery's own format)."""
    logs.configure(settings.LOG_LEVEL, settings)


@worker_init.connect
def _clean_scratch(**_: Any) -> None:
    """Remove job directories left by pool processes that were killed (kill -9, OOM)."""
    remove_orphans(settings.WORKER_TMP_DIR)


@celeryd_init.connect
def _render_bumpers(options: dict[str, Any] | None = None, **_: Any) -> None:
    """Render the intro and outro before the pool starts, so that no job waits for them (the cache is on disk).

    Not on a worker that reads other queues only (the webhook workers'): it runs no FFmpeg.
    """
    from tasks.process import pipeline

    queues = (options or {}).get("queues") or []
    if isinstance(queues, str):
        queues = queues.split(",")
    if queues and settings.SQS_QUEUE_NAME not in queues:
        return

    with flask_app.app_context():
        try:
            pipeline().bumpers()
        except Exception as exc:  # the first job renders them instead
            logging.getLogger(__name__).warning("bumpers not rendered ahead", extra={"error": repr(exc)})


@worker_init.connect
def _serve_metrics(**_: Any) -> None:
    """Serve the host's worker metrics on ``WORKER_METRICS_PORT`` (0: none)."""
    if port := settings.WORKER_METRICS_PORT:
        prometheus.serve_worker(flask_app, port)
        logging.getLogger(__name__).info("metrics served", extra={"port": port})


@task_retry.connect
def _count_worker_lost(reason: Any = None, **_: Any) -> None:
    """Count the main process's retry of a job whose pool process died (the pool counts its own retries)."""
    if isinstance(getattr(reason, "exc", None), WorkerLostError):
        prometheus.RETRIES.labels("worker_lost").inc()


@worker_process_init.connect
def _fresh_engine(**_: Any) -> None:
    """Drop database connections inherited from the parent (never share them across fork)."""
    with flask_app.app_context():
        db.engine.dispose(close=False)


@worker_process_init.connect
def _make_storage(**_: Any) -> None:
    """Make this pool process's S3 client before its first job, which would wait about 0.2 s for it."""
    with flask_app.app_context():
        get_storage().warm()


@worker_process_init.connect
def _clean_after_lost_process(**_: Any) -> None:
    """Remove the job directory of the pool process this one replaces, when it was killed alone."""
    remove_orphans(settings.WORKER_TMP_DIR)


@worker_shutdown.connect(dispatch_uid="videoproc-delete-mailbox")
def _delete_mailbox(sender: Any = None, **_: Any) -> None:
    """Leave no mailbox queue (nor its SNS subscription) behind on SQS for a worker that is gone."""
    if sender is not None and getattr(sender, "hostname", None):
        sqs.delete_mailbox(celery_app, sender.hostname)


@task_revoked.connect
def _cancel_revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
    """Cancel the video of a revoked task (Flower's revoke and terminate, ``celery control revoke``).

    Celery skips a revoked message itself, and terminates a running one on request; the
    row must end ``cancelled`` too, or it would wait as queued (or processing) for ever.
    """
    name = getattr(sender, "name", None)
    if name not in (PROCESS_TASK, OPTIMIZE_TASK) or request is None:
        return
    video_id = (request.args or [None])[0] or (request.kwargs or {}).get("video_id")
    if video_id:
        with flask_app.app_context():
            (jobs.cancel if name == PROCESS_TASK else optimize.cancel)(video_id)
            db.session.commit()
        logging.getLogger(__name__).info("revoked: cancelled", extra={"video_id": video_id, "task_id": request.id})


import tasks.optimize
import tasks.process
import tasks.webhooks  # noqa: F401
