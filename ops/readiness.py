"""The deep check: do the database, S3 and SQS answer, can FFmpeg's jail be made (``/readyz``, the ``Ready`` metric)."""

from __future__ import annotations

from sqlalchemy import text

from domain.extensions import db, get_settings
from domain.storage import get_storage
from media import jail
from ops.aws import ping_queue


def check() -> dict[str, str]:
    """Return ``"ok"`` or ``"error: <type>"`` for each dependency (in an app context)."""
    checks = {
        "database": lambda: db.session.execute(text("SELECT 1")),
        "s3": lambda: get_storage().ping(),
        "sqs": lambda: ping_queue(get_settings()),
    }
    settings = get_settings()
    if settings.MEDIA_JAIL and settings.VIDEOPROC_ROLE in ("", "web"):  # the web probes uploads in the jail
        checks["jail"] = jail.check  # (the ops instance runs no FFmpeg: its sandbox may not make namespaces)
    results: dict[str, str] = {}
    for name, probe in checks.items():
        try:
            probe()
            results[name] = "ok"
        except Exception as exc:  # any failure means "not ready"; the answer says which
            db.session.rollback()
            results[name] = f"error: {type(exc).__name__}"
    return results


def ready(results: dict[str, str]) -> bool:
    """Return whether every check passed."""
    return all(v == "ok" for v in results.values())
