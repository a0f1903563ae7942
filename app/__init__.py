"""The web side: upload → S3 → database row → queue."""

from __future__ import annotations

from flask import Flask

from app import api, cli, database, logs, prometheus, security, sessions, spool, storage, timing, web
from app.api import errors
from app.extensions import celery_init_app, db, migrate
from app.ratelimit import limiter
from app.safejson import SafeJSONProvider
from config import Settings, load_settings
from config.settings import INSTANCE_DIR, ROOT


def create_app(settings: Settings | None = None) -> Flask:
    """Build the Flask app from the environment's settings, or from ``settings`` when given."""
    app = Flask(__name__, instance_path=str(INSTANCE_DIR))
    settings = load_settings() if settings is None else settings
    app.config.from_mapping(settings.as_config())
    app.extensions["settings"] = settings
    app.json = SafeJSONProvider(app)

    timing.init_app(app)
    logs.init_app(app)
    prometheus.init_app(app)
    security.init_app(app)
    spool.init_app(app)
    limiter.init_app(app)
    sessions.init_app(app)
    db.init_app(app)
    database.init_app(app)
    migrate.init_app(app, db, directory=str(ROOT / "migrations"))
    storage.init_app(app)
    celery_init_app(app)
    errors.init_app(app)
    cli.init_app(app)
    api.init_app(app)
    app.register_blueprint(web.bp)
    return app
