"""Every error leaves as JSON: ``{"error": {"code": …, "message": …}}``."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, g, jsonify, request
from flask_limiter.errors import RateLimitExceeded
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from domain.errors import (
    Conflict,
    DomainError,
    Invalid,
    NotAVideo,
    NotFound,
    OutOfBounds,
    OverLimit,
    TooLarge,
    Unavailable,
)
from domain.extensions import db, get_settings

logger = logging.getLogger(__name__)


class APIError(Exception):
    """An error the API answers with ``status``, ``code`` and ``message``.

    ``final``: the request created something before it failed (a 503 for a stored upload), so a
    retry with its ``Idempotency-Key`` must get this answer back, never run again.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        final: bool = False,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra or {}
        self.headers, self.final = headers or {}, final


def error_response(
    status: int, code: str, message: str, extra: dict[str, Any] | None = None, fields: dict[str, Any] | None = None
) -> tuple[Response, int]:
    """Return the JSON error body (with any ``extra`` top-level fields) and its status."""
    error: dict[str, Any] = {"code": code, "message": message}
    if fields:
        error["fields"] = fields
    return jsonify({"error": error, **(extra or {})}), status


def invalid_request(messages: dict[str, Any]) -> tuple[Response, int]:
    """Answer webargs' validation errors (``{location: {field: [problems]}}``) with 400 ``invalid_request``."""
    if "json" in messages and not isinstance(request.get_json(silent=True), dict):
        return error_response(400, "invalid_json", "The body must be a JSON object.")
    fields: dict[str, Any] = {}
    for location, by_field in messages.items():
        fields.update(by_field if isinstance(by_field, dict) else {location: by_field})
    summary = "; ".join(f"{name}: {' '.join(map(str, problems))}" for name, problems in sorted(fields.items()))
    return error_response(400, "invalid_request", f"Invalid request: {summary}"[:500], fields=fields)


# Each domain error's HTTP status: the domain (domain/errors.py) knows no HTTP.
STATUS: dict[type[DomainError], int] = {
    Invalid: 400,
    NotFound: 404,
    Conflict: 409,
    TooLarge: 413,
    NotAVideo: 415,
    OutOfBounds: 422,
    OverLimit: 429,
    Unavailable: 503,
}


def from_domain(exc: DomainError) -> APIError:
    """Return the answer to a domain error: its status, code and message, and ``Retry-After`` when it has one."""
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else {}
    return APIError(STATUS[type(exc)], exc.code, exc.message, exc.extra, headers)


def _code(exc: HTTPException) -> str:
    return (exc.name or "error").lower().replace(" ", "_").replace("'", "")


def init_app(app: Flask) -> None:
    """Register the JSON error handlers."""

    @app.errorhandler(APIError)
    def api_error(exc: APIError) -> tuple[Response, int]:
        response, status = error_response(exc.status, exc.code, exc.message, exc.extra)
        response.headers.update(exc.headers)
        return response, status

    @app.errorhandler(DomainError)
    def domain_error(exc: DomainError) -> tuple[Response, int]:
        return api_error(from_domain(exc))

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge) -> tuple[Response, int]:
        limit, length = request.max_content_length, request.content_length
        if request.endpoint == "api.upload" and (length is None or limit is None or length > limit):
            maximum = get_settings(app).MAX_UPLOAD_BYTES
            return error_response(413, "file_too_large", f"The upload exceeds the limit of {maximum} bytes.")
        if length is not None and limit is not None and length > limit:
            return error_response(413, "body_too_large", f"The request body exceeds {limit} bytes for this route.")
        parts = get_settings(app).MAX_FORM_PARTS
        return error_response(413, "request_too_large", f"The body is too large or has more than {parts} parts.")

    @app.errorhandler(RateLimitExceeded)
    def rate_limited(exc: RateLimitExceeded) -> tuple[Response, int]:
        return error_response(429, "rate_limited", "Too many attempts; wait for the seconds in Retry-After.")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        data = getattr(exc, "data", None)
        if isinstance(data, dict) and isinstance(data.get("messages"), dict):  # webargs: the schema said no
            return invalid_request(data["messages"])
        return error_response(exc.code or 500, _code(exc), exc.description or exc.name)

    @app.errorhandler(Exception)
    def internal_error(exc: Exception) -> tuple[Response, int]:
        db.session.rollback()
        logger.exception("unhandled error")
        request_id = g.get("request_id")
        return error_response(500, "internal_error", f"An unexpected error occurred (request {request_id}).")
