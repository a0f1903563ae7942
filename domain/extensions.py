"""Extensions, created unbound and bound to the app in ``domain.runtime.create_runtime``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celery import Celery, Task
from flask import Flask, current_app
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase

import celeryconfig
from config import Settings


class Base(DeclarativeBase):
    """Declarative base for every model."""


db = SQLAlchemy(model_class=Base)
# The class models derive from: Flask-SQLAlchemy's ``db.Model`` (a subclass of Base made at run
# time, which type checkers can't see through).
if TYPE_CHECKING:
    Model = Base
else:
    Model = db.Model
migrate = Migrate()


def get_settings(app: Flask | None = None) -> Settings:
    """Return the typed settings of ``app``, the current app by default."""
    settings: Settings = (app or current_app).extensions["settings"]
    return settings


def celery_init_app(app: Flask) -> Celery:
    """Create the Celery app whose tasks run inside this Flask app's context."""

    class FlaskTask(Task):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object(celeryconfig)
    celery_app.conf.update(celeryconfig.environment_settings(get_settings(app)))
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app
