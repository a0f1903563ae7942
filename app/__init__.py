"""The HTTP edge: the API, the page and the ``flask`` command line, on the domain's runtime."""

from __future__ import annotations

from flask import Flask

from app import api, cli, instrumentation, security, sessions, spool, timing, web
from app.api import errors
from app.ratelimit import limiter
from app.safejson import SafeJSONProvider
from config import Settings
from config.settings import ROOT
from domain.extensions import db, migrate
from domain.runtime import create_runtime
from ops import logs


def create_app(settings: Settings | None = None) -> Flask:
    """Build the Flask app from the environment's settings, or from ``settings`` when given."""
    app = create_runtime(__name__, settings)
    app.json = SafeJSONProvider(app)

    timing.init_app(app)
    logs.init_app(app)
    instrumentation.init_app(app)
    security.init_app(app)
    spool.init_app(app)
    limiter.init_app(app)
    sessions.init_app(app)
    migrate.init_app(app, db, directory=str(ROOT / "migrations"))
    errors.init_app(app)
    cli.init_app(app)
    api.init_app(app)
    app.register_blueprint(web.bp)
    return app
