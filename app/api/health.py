"""Liveness and readiness for load balancers."""

from __future__ import annotations

from typing import Any

from app.api import Blueprint
from app.api.schemas import HealthSchema, ReadySchema
from ops import readiness

bp = Blueprint("health", __name__, description="For load balancers")


@bp.route("/healthz", methods=["GET"])
@bp.response(200, HealthSchema)
def healthz() -> dict[str, str]:
    """Answer while the process is alive."""
    return {"status": "ok"}


@bp.route("/readyz", methods=["GET"])
@bp.response(200, ReadySchema)
@bp.alt_response(503, schema=ReadySchema, description="A dependency does not answer; the checks say which")
def readyz() -> tuple[dict[str, Any], int]:
    """Answer 200 when the database, S3 and SQS all respond, else 503 naming the failures."""
    results = readiness.check()
    ready = readiness.ready(results)
    return {"status": "ready" if ready else "unavailable", "checks": results}, 200 if ready else 503
