"""Structured logging: one ``key=value`` line per record, with the job's context."""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import watchtower
from flask import Flask, Response, g, request

from config import Settings
from domain.extensions import get_settings
from domain.storage import aws_client

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("log_context", default={})  # noqa: B039 (never mutated)
CONTEXT_KEYS = ("video_id", "task_id", "user_id", "request_id")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


@contextmanager
def log_context(**values: Any) -> Iterator[None]:
    """Add ``values`` (such as video_id and task_id) to every record logged inside."""
    token = _context.set({**_context.get(), **{k: v for k, v in values.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def _escape(char: str) -> str:
    if char.isprintable():
        return char
    return ESCAPES.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 256 else f"\\u{ord(char):04x}")


def _quote(value: Any) -> str:
    """Return ``value`` as one token: quoted when it has spaces, and never a raw control character."""
    text = str(value)
    if text == "" or any(c in text for c in ' ="\\') or not text.isprintable():
        return '"' + "".join(_escape(c) for c in text.replace("\\", "\\\\").replace('"', '\\"')) + '"'
    return text


class KeyValueFormatter(logging.Formatter):
    """Format records as ``ts=… level=… logger=… msg=… video_id=… task_id=…``."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields.update(_context.get())
        fields.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED and not k.startswith("_")})
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        return " ".join(f"{key}={_quote(value)}" for key, value in fields.items())


class CloudWatchHandler(watchtower.CloudWatchLogHandler):
    """watchtower's batching handler, with a client of its own in every forked process.

    A boto3 client's connection pool is not to be shared across fork (a pool process would
    write into its parent's socket); each process also gets its own stream.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__(
            log_group_name=settings.LOG_GROUP,
            log_stream_name="{machine_name}/{program_name}-{process_id}",
            send_interval=10,
            create_log_group=False,  # the stack creates it, with its retention and metric filter
            boto3_client=self._client(),
        )
        self.setFormatter(KeyValueFormatter())

    def _client(self) -> Any:
        return aws_client("logs", self.settings)

    def _at_fork_reinit(self) -> None:
        super()._at_fork_reinit()
        self.cwl_client = self._client()


_shipper: CloudWatchHandler | None = None


def configure(level: str = "INFO", settings: Settings | None = None) -> None:
    """Send every logger's records to stderr as key=value lines, and to CloudWatch Logs when ``LOG_GROUP`` is set."""
    global _shipper
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    if settings and settings.LOG_GROUP:
        if _shipper is None:  # one per process, however often logging is configured
            _shipper = CloudWatchHandler(settings)
        root.handlers.append(_shipper)
    root.setLevel(level.upper())
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def init_app(app: Flask) -> None:
    """Configure logging from ``LOG_LEVEL``; tag each request's records (and answer) with its request id.

    The id is the proxy's ``X-Request-ID`` when it is well formed, else a new one.
    """
    settings = get_settings(app)
    configure(settings.LOG_LEVEL, settings)

    @app.before_request
    def _start() -> None:
        given = request.headers.get("X-Request-ID", "")
        g.request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex
        g.log_token = _context.set({**_context.get(), "request_id": g.request_id})

    @app.after_request
    def _tag(response: Response) -> Response:
        if "request_id" in g:
            response.headers["X-Request-ID"] = g.request_id
        return response

    @app.teardown_request
    def _end(_exc: BaseException | None) -> None:
        token = g.pop("log_token", None)
        if token is not None:
            _context.reset(token)
