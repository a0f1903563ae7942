"""Pins on what this project's changes to kombu and Celery rely on (listed in tasks/sqs.py).

Each assertion names a fact of the installed kombu or Celery that a patch depends on; an
upgrade that changes it fails here, before the patch silently stops working.
"""

from __future__ import annotations

import inspect

from celery.events import dispatcher, event, receiver
from celery.worker.consumer.control import Control
from kombu.pidbox import Mailbox
from kombu.transport import SQS
from kombu.transport.virtual import base as virtual

from tasks import monitoring, sqs


def test_stock_sqs_does_not_declare_fanout_and_celery_needs_it_for_remote_control() -> None:
    assert SQS.Transport.implements.exchange_type == frozenset({"direct"}), "upstream declares it now: drop patch 1"
    assert "supports_exchange_type('fanout')" in inspect.getsource(Control.include_if)
    assert sqs.Transport.implements.exchange_type == frozenset({"direct", "fanout"})


def test_reply_queues_are_named_after_the_asker_and_the_reply_exchange() -> None:
    mailbox = Mailbox("celery")
    queue = mailbox.get_reply_queue()
    assert Mailbox.reply_exchange_fmt == "reply.%s.pidbox"
    assert (queue.name, queue.routing_key) == (f"{mailbox.oid}.reply.celery.pidbox", mailbox.oid)
    assert sqs.Channel._lookup is not virtual.Channel._lookup
    assert list(inspect.signature(virtual.Channel._lookup).parameters) == ["self", "exchange", "routing_key", "default"]


def test_the_sqs_channel_hooks_keep_their_shape() -> None:
    assert list(inspect.signature(SQS.Channel._loop1).parameters) == ["self", "queue", "messages_fetched"]
    assert "self.connection.polling_interval" in inspect.getsource(SQS.Channel._loop1), "the read patch 5 guards"
    assert list(inspect.signature(SQS.Channel._delete_message).parameters) == ["self", "queue_name", "message"]
    assert "exchange" in inspect.signature(SQS.Channel._delete).parameters
    assert hasattr(SQS.Channel, "remove_stale_sns_subscriptions")
    assert "self._queue_cache.pop(queue, None)" in inspect.getsource(SQS.Channel._delete), "patch 6's cache key"
    assert "self._queue_cache[sqs_qname]" in inspect.getsource(SQS.Channel._new_queue)
    assert "after_reply_message_received" in vars(virtual.Channel), "kombu deletes reply queues once read"
    # prune_mailboxes: a mailbox's SQS name from a worker's hostname, as kombu makes it
    assert "self.entity_name(self.queue_name_prefix + queue_name)" in inspect.getsource(
        SQS.Channel.canonical_queue_name
    )


def test_events_exchange_is_built_in_the_places_monitoring_replaces() -> None:
    assert dispatcher.get_exchange is receiver.get_exchange
    assert "get_exchange" in vars(event)
    monitoring.install()
    assert dispatcher.get_exchange is monitoring.get_exchange and receiver.get_exchange is monitoring.get_exchange


def test_prometheus_client_storage_can_be_chosen_before_metrics_exist() -> None:
    from prometheus_client import values

    assert hasattr(values, "ValueClass") and callable(values.MultiProcessValue)
    assert "values.ValueClass" in inspect.getsource(__import__("prometheus_client.metrics").metrics)
