"""Server-Timing: how long a request waited on S3 and SQS, and how long the app had it in all.

Every answer carries ``Server-Timing: s3;dur=…, sqs;dur=…, app;dur=…`` (milliseconds): the
browser's network panel shows it, and ``bench.uploads`` subtracts the waits to find the API's
own work. The time a request queued for a gunicorn thread is outside ``app``.
"""

from __future__ import annotations

import time

from flask import Flask, Response, g

from domain.timing import SERVICES


def header(waits: dict[str, float], total: float) -> str:
    """Return the Server-Timing value for ``waits`` and the app's ``total`` (seconds)."""
    parts = [f"{service};dur={waits.get(service, 0.0) * 1000:.1f}" for service in SERVICES]
    return ", ".join([*parts, f"app;dur={total * 1000:.1f}"])


def parse(value: str) -> dict[str, float]:
    """Return a Server-Timing value's durations, milliseconds by name."""
    found = {}
    for metric in value.split(","):
        name, *params = (p.strip() for p in metric.split(";"))
        for param in params:
            if param.startswith("dur="):
                found[name] = float(param[4:])
    return found


def init_app(app: Flask) -> None:
    """Time every request and add its Server-Timing header."""

    @app.before_request
    def start() -> None:
        g.timing_started = time.perf_counter()

    @app.after_request
    def report(response: Response) -> Response:
        if "timing_started" in g:
            total = time.perf_counter() - g.timing_started
            response.headers["Server-Timing"] = header(g.get("aws_waits", {}), total)
        return response
