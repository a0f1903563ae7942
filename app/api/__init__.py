"""The JSON API: auth, videos and direct uploads, validated by schemas that also write its OpenAPI document.

flask-smorest (marshmallow and webargs) parses and validates every request against the
schemas in ``schemas.py`` and generates ``/api/openapi.json`` from the same schemas and
decorators; ``/api/docs`` is Swagger UI, served from this app.
"""

from __future__ import annotations

import http
import json
from collections.abc import Callable
from typing import Any

import flask_smorest
from flask import Blueprint as FlaskBlueprint
from flask import Flask, Response
from webargs.flaskparser import FlaskParser
from webargs.multidictproxy import MultiDictProxy
from werkzeug.datastructures import CombinedMultiDict

from app.api.schemas import ErrorSchema
from domain.extensions import db

DEFAULT_VALIDATION_STATUS = 400


class Parser(FlaskParser):
    """webargs's Flask parser, plus ``multipart``: form fields and files checked by one schema."""

    __location_map__ = {**FlaskParser.__location_map__, "multipart": "load_multipart"}
    DEFAULT_VALIDATION_STATUS = DEFAULT_VALIDATION_STATUS

    def load_multipart(self, req: Any, schema: Any) -> MultiDictProxy:
        return self._makeproxy(CombinedMultiDict([req.form, req.files]), schema)

    def load_json(self, req: Any, schema: Any) -> Any:
        try:
            return super().load_json(req, schema)
        except RecursionError:  # nested deeper than Python's stack: bad JSON, not a server error
            return self._handle_invalid_json_error(json.JSONDecodeError("nested too deeply", "", 0), req)


class Blueprint(flask_smorest.Blueprint):
    """A flask-smorest blueprint whose validation errors are 400 and that knows ``multipart``."""

    ARGUMENTS_PARSER = Parser()
    DEFAULT_LOCATION_CONTENT_TYPE_MAPPING = {
        **flask_smorest.Blueprint.DEFAULT_LOCATION_CONTENT_TYPE_MAPPING,
        "multipart": "multipart/form-data",
    }


class Api(flask_smorest.Api):
    """flask-smorest's Api, documenting our error body; errors are answered by ``app.api.errors``."""

    ERROR_SCHEMA = ErrorSchema

    def _register_error_handlers(self) -> None:
        """Leave error handling to ``app.api.errors``: one JSON error format for every route."""


bp = Blueprint("api", __name__, url_prefix="/api", description="Accounts and videos")
BEARER: list[dict[str, list[str]]] = [{"bearerAuth": []}]


@bp.after_request
def end_unit_of_work(response: Response) -> Response:
    """Commit the request's unit of work when it answered on purpose (errors included); roll back after a 500.

    Views and the domain change the session and return; a view commits earlier only where a
    change must be seen before a side effect (a row before its message).
    """
    if response.status_code == 500:
        db.session.rollback()
    else:
        db.session.commit()
    return response


def error_answers(*statuses: int) -> Callable[[Any], Any]:
    """Document the error answers ``statuses`` of a route (each with the error schema)."""

    def decorate(view: Any) -> Any:
        for status in statuses:
            view = bp.alt_response(status, response=http.HTTPStatus(status).name)(view)
        return view

    return decorate


def init_app(app: Flask) -> None:
    """Bind flask-smorest, register the API's routes and serve Swagger UI's files locally."""
    import swagger_ui_bundle

    app.config.setdefault("API_TITLE", "videoproc")
    app.config.setdefault("API_VERSION", "1")
    app.config.setdefault("OPENAPI_VERSION", "3.0.3")
    app.config.setdefault("OPENAPI_URL_PREFIX", "/api")
    app.config.setdefault("OPENAPI_JSON_PATH", "openapi.json")
    app.config.setdefault("OPENAPI_SWAGGER_UI_PATH", "docs")
    app.config.setdefault("OPENAPI_SWAGGER_UI_URL", "/api/docs/assets/")
    api = Api(app)
    app.extensions["api"] = api
    api.spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"})
    from app.api import auth, health, uploads, videos, webhooks  # noqa: F401  (routes register on bp and health.bp)
    from app.api.schemas import WebhookEventSchema

    api.spec.components.schema("WebhookEvent", schema=WebhookEventSchema)  # the callbacks' body

    api.register_blueprint(bp)
    api.register_blueprint(health.bp)

    folder = swagger_ui_bundle.swagger_ui_path
    assets = FlaskBlueprint("docs_assets", __name__, static_folder=folder, static_url_path="")
    app.register_blueprint(assets, url_prefix="/api/docs/assets")
