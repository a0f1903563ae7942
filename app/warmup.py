"""Make a web process's AWS clients before it serves its first request.

Each costs about 60 ms of CPU (boto3 loads the service's model): made on demand, they fall
on the first requests a new web process takes, all at once when an instance joins the load
balancer under load. ``deploy/gunicorn_conf.py`` calls ``warm_up`` in each worker after it
loads the app and before it accepts a connection.
"""

from __future__ import annotations

import logging

from flask import Flask

from domain.storage import get_storage

logger = logging.getLogger(__name__)


def warm_up(app: Flask) -> None:
    """Make this process's S3 client and one connection of the broker's producer pool (its SQS client)."""
    with app.app_context():
        get_storage().warm()
        try:
            with app.extensions["celery"].producer_or_acquire() as producer:
                producer.channel  # noqa: B018 (opening the channel lists the queues, with this process's client)
        except Exception as exc:  # a broker down at boot must not stop the web process: /healthz says so
            logger.warning("broker warm-up failed", extra={"error": repr(exc)})
