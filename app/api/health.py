"""Liveness and readiness for load balancers."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from app.api import Blueprint
from app.api.schemas import HealthSchema, ReadySchema
from app.aws import ping_queue
from app.extensions import db, get_settings
from app.storage import get_storage

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
    checks = {
        "database": lambda: db.session.execute(text("SELECT 1")),
        "s3": lambda: get_storage().ping(),
        "sqs": lambda: ping_queue(get_settings()),
    }
    results: dict[str, str] = {}
    for name, check in checks.items():
        try:
            check()
            results[name] = "ok"
        except Exception as exc:  # any failure means "not ready"; the body says which
            db.session.rollback()
            results[name] = f"error: {type(exc).__name__}"
    ready = all(v == "ok" for v in results.values())
    return {"status": "ready" if ready else "unavailable", "checks": results}, 200 if ready else 503
