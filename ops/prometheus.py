"""Prometheus metrics: served by the web (``app/instrumentation.py``) and on a port of the worker's own.

Both run several processes (gunicorn's workers, Celery's pool), so both use
prometheus_client's multi-process mode: with ``PROMETHEUS_MULTIPROC_DIR`` set, every process
writes its samples to files there and a scrape adds them up. Without it (one process: tests,
``flask run``) this process's own samples are served. Videos by status and the dead-letter
queue's depth are read at scrape time, from the database and SQS.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from flask import Flask
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import func, select

from domain.extensions import db, get_settings
from domain.models import Status, Video
from ops.metrics import dead_letter_depth

UPLOADS = Counter("videoproc_uploads", "Uploads by outcome: accepted, or the error code answered", ["outcome"])
REQUEST_SECONDS = Histogram("videoproc_request_seconds", "API request latency by route", ["route", "method", "status"])
JOBS = Counter("videoproc_jobs", "Processing jobs that ended, by outcome", ["outcome"])
PROCESSING_SECONDS = Histogram(
    "videoproc_processing_seconds",
    "Wall time of a processed job: download, probe, encode, poster, upload",
    buckets=(2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600),
)
PROCESSING_SPEED = Histogram(
    "videoproc_processing_speed",
    "Output seconds per wall-clock second of a processed job",
    buckets=(0.1, 0.25, 0.5, 1, 1.5, 2, 3, 4, 6, 8, 12),
)
STEP_SECONDS = Histogram(
    "videoproc_job_step_seconds",
    "Wall time of a processed job's steps: download (opening the original; FFmpeg reads the rest as it arrives), "
    "encode (probe, FFmpeg, poster), upload",
    ["step"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 60, 120, 300, 600, 1200),
)
RETRIES = Counter("videoproc_retries", "Retries of a job, by reason", ["reason"])
WEBHOOK_ATTEMPTS = Counter(
    "videoproc_webhook_attempts",
    "Webhook POSTs by outcome: succeeded, retrying (an error or a non-2xx answer; tried again), failed (no more tries)",
    ["outcome"],
)
WEBHOOK_SECONDS = Histogram(
    "videoproc_webhook_seconds",
    "From the event (the video's final state) to its receiver's 2xx",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600, 86400),
)
OPTIMIZE_JOBS = Counter(
    "videoproc_optimize_jobs",
    "Optimize stages that ended, by outcome: optimized, failed (the published rendition stays), stopped",
    ["outcome"],
)
OPTIMIZE_SECONDS = Histogram(
    "videoproc_optimize_seconds",
    "Wall time of an optimized video's stage: the CRF probes and every rendition, at idle CPU priority",
    buckets=(10, 30, 60, 120, 300, 600, 1200, 3600, 7200, 14400),
)
OWN = (
    UPLOADS,
    REQUEST_SECONDS,
    JOBS,
    PROCESSING_SECONDS,
    PROCESSING_SPEED,
    STEP_SECONDS,
    RETRIES,
    WEBHOOK_ATTEMPTS,
    OPTIMIZE_JOBS,
    OPTIMIZE_SECONDS,
    WEBHOOK_SECONDS,
)


class StateCollector:
    """Videos by status (the database) and the dead-letter queue's depth (SQS), read at scrape time."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        videos = GaugeMetricFamily("videoproc_videos", "Videos by status", labels=["status"])
        with self.app.app_context():
            counts = dict(db.session.execute(select(Video.status, func.count()).group_by(Video.status)).all())
            db.session.commit()
            for status in Status:
                videos.add_metric([status.value], counts.get(status.value, 0))
            yield videos
            try:
                depth = dead_letter_depth(get_settings(self.app))
            except Exception:  # SQS unreachable: no sample, rather than a failed scrape
                return
        yield GaugeMetricFamily("videoproc_dead_letter_messages", "Messages in the dead-letter queue", value=depth)


def registry(app: Flask, state: bool = True) -> CollectorRegistry:
    """Return a registry of every process's samples (or this one's), and with ``state`` what is read at scrape time."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:
        for metric in OWN:
            registry.register(metric)
    if state:
        registry.register(StateCollector(app))
    return registry


def serve_worker(app: Flask, port: int) -> None:
    """Serve the worker host's own metrics (its main process and pool) on ``port``, from a thread."""
    start_http_server(port, registry=registry(app, state=False))


def exposition(app: Flask) -> bytes:
    """Return the metrics in Prometheus's text format."""
    return generate_latest(registry(app))
