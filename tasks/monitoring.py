"""Make Celery's events travel over SQS, so Flower can watch an SQS-brokered worker.

Events go to the ``celeryev`` exchange. Celery declares it as a *topic* exchange, which
the SQS transport can only route inside the publishing process (its bindings live in
memory), so a monitor in another process never receives anything. kombu's SQS transport
can fan out through SNS (``supports_fanout``): declared as a fanout exchange, ``celeryev``
becomes an SNS topic, and each monitor's event queue an SQS queue subscribed to it.
Celery already makes this switch for Redis; this does the same for SQS.
"""

from __future__ import annotations

from typing import Any

from celery.events import dispatcher, event, receiver

_celery_get_exchange = event.get_exchange


def get_exchange(conn: Any, name: str = event.EVENT_EXCHANGE_NAME) -> Any:
    """Return Celery's event exchange, as a fanout exchange on SQS."""
    exchange = _celery_get_exchange(conn, name)
    if conn.transport.driver_type == "sqs":
        exchange.type = "fanout"
    return exchange


def install() -> None:
    """Use ``get_exchange`` wherever Celery builds an event dispatcher or receiver."""
    dispatcher.get_exchange = receiver.get_exchange = get_exchange
