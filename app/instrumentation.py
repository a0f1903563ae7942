"""The web's Prometheus instrumentation: every request timed, uploads counted by outcome, ``GET /metrics``.

The metrics themselves, and how several processes' samples add up, are ``ops/prometheus.py``.
"""

from __future__ import annotations

import hmac
import time
from typing import Any

from flask import Flask, Response, abort, g, request
from prometheus_client import CONTENT_TYPE_LATEST

from domain.extensions import get_settings
from ops.prometheus import REQUEST_SECONDS, UPLOADS, exposition

# Every label comes from a fixed set: the app's rules, these methods, the app's own status codes.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UPLOAD_ENDPOINT = "api.upload"  # app/api/videos.py: upload


def _route() -> str:
    """The matched rule (one of the app's own), or ``unmatched``: never the client's path."""
    return request.url_rule.rule if request.url_rule else "unmatched"


def _method() -> str:
    """The request's method when HTTP defines it, else ``other``: a client's made-up method is no new series."""
    return request.method if request.method in METHODS else "other"


def _upload_outcome(response: Response) -> str:
    if response.status_code == 202:
        return "accepted"
    body: Any = response.get_json(silent=True) or {}
    error = body.get("error") if isinstance(body, dict) else None
    return str(error.get("code")) if isinstance(error, dict) and error.get("code") else str(response.status_code)


def init_app(app: Flask) -> None:
    """Time every request, count uploads by outcome, and serve ``GET /metrics``.

    ``METRICS_TOKEN``, when set, must come as a bearer token (Prometheus's
    ``authorization`` scrape option); production serves no metrics without one.
    """

    @app.before_request
    def _start() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        if "metrics_started" in g:
            seconds = time.perf_counter() - g.pop("metrics_started")
            REQUEST_SECONDS.labels(_route(), _method(), str(response.status_code)).observe(seconds)
        if request.endpoint == UPLOAD_ENDPOINT:
            UPLOADS.labels(_upload_outcome(response)).inc()
        return response

    @app.get("/metrics")
    def metrics() -> Response:
        token = get_settings(app).METRICS_TOKEN
        if token:
            given = request.headers.get("Authorization", "").removeprefix("Bearer ")
            if not hmac.compare_digest(given.encode(), token.encode()):
                abort(401)
        elif get_settings(app).APP_ENV == "production":
            abort(404)
        return Response(exposition(app), mimetype=CONTENT_TYPE_LATEST)
