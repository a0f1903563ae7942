"""How long a request waits on S3 and SQS: the domain's calls are timed here.

The HTTP edge reports the sums in each answer's ``Server-Timing`` header (``app/timing.py``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import g, has_request_context

# The waits a request reports, in this order, always (zero when it made no such call).
SERVICES = ("s3", "sqs")


def _add(service: str, seconds: float) -> None:
    if has_request_context():  # calls from s3transfer's threads or the worker are not a request's
        waits = g.setdefault("aws_waits", dict.fromkeys(SERVICES, 0.0))
        waits[service] = waits.get(service, 0.0) + seconds


@contextmanager
def waiting(service: str) -> Iterator[None]:
    """Count the time inside the block as this request waiting on ``service``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        _add(service, time.perf_counter() - started)


def watch(client: Any, service: str) -> Any:
    """Count every API call ``client`` (a boto3 client) makes on a request's thread as waiting on ``service``."""

    def before(context: dict[str, Any], **_: Any) -> None:
        context["timing_started"] = time.perf_counter()

    def after(context: dict[str, Any], **_: Any) -> None:
        if "timing_started" in context:
            _add(service, time.perf_counter() - context.pop("timing_started"))

    client.meta.events.register("before-call", before)
    client.meta.events.register("after-call", after)
    client.meta.events.register("after-call-error", after)
    return client
