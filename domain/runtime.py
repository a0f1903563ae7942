"""The Flask app every process runs the domain in: settings, the database, storage, the broker.

The web's ``create_app`` builds on it; the worker (``tasks/celery.py``) runs in it alone, so
a worker loads no route, page or HTTP error handler.
"""

from __future__ import annotations

from flask import Flask

from config import Settings, load_settings
from config.settings import INSTANCE_DIR
from domain import database, media, storage
from domain.extensions import celery_init_app, db


def create_runtime(name: str, settings: Settings | None = None) -> Flask:
    """Return a Flask app named ``name`` with ``settings`` (the environment's by default) and the extensions."""
    app = Flask(name, instance_path=str(INSTANCE_DIR))
    settings = load_settings() if settings is None else settings
    app.config.from_mapping(settings.as_config())
    app.extensions["settings"] = settings
    media.confinement(settings)  # a container with no demuxer stops the process here
    db.init_app(app)
    database.init_app(app)
    storage.init_app(app)
    celery_init_app(app)
    return app
