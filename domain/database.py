"""The database connection: each new connection authenticated by a fresh RDS IAM token.

With ``DATABASE_IAM_AUTH`` the URL names a user and no password (``deploy/envfile.py`` writes
``postgresql://videoproc_<role>@host:5432/videoproc?sslmode=require``): every connection the
pool opens asks botocore for an IAM authentication token for that user (signed locally with
the instance role's credentials, valid 15 minutes, checked only when the connection opens).
Nothing to rotate, nothing to re-read: a rotated master password changes none of it.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask
from sqlalchemy import event

from domain.extensions import db, get_settings
from domain.storage import aws_client

_clients: dict[int, Any] = {}  # one RDS client per process (made after a fork, never shared across one)


def auth_token(app: Flask, host: str, port: int, user: str) -> str:
    """Return an IAM authentication token for ``user`` at ``host:port`` (signed here; no request to AWS)."""
    settings = get_settings(app)
    rds = _clients.get(os.getpid())
    if rds is None:
        rds = _clients[os.getpid()] = aws_client("rds", settings)
    token: str = rds.generate_db_auth_token(DBHostname=host, Port=port, DBUsername=user, Region=settings.AWS_REGION)
    return token


def init_app(app: Flask) -> None:
    """Give every new connection of the app's engine an IAM token as its password (``DATABASE_IAM_AUTH``)."""
    if not get_settings(app).DATABASE_IAM_AUTH:
        return
    with app.app_context():
        engine = db.engine
    url = engine.url
    if not url.username or not url.host:
        raise ValueError("DATABASE_IAM_AUTH needs a DATABASE_URL with a user and a host")

    @event.listens_for(engine, "do_connect")
    def _with_token(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        cparams["password"] = auth_token(app, url.host or "", url.port or 5432, url.username or "")
