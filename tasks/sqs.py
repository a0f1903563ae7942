"""kombu's SQS transport, made to carry Celery's monitoring and remote control.

What this changes in kombu and Celery (docs/upstream.md lists every change with its upstream
reference; ``tests/test_upstream.py`` shows each by behaviour, stock and patched):

1. **Remote control (fanout).** ``Transport.implements`` adds ``fanout`` to ``direct``:
   kombu's SQS transport does fan out, through SNS (``supports_fanout``), but doesn't say
   so, and Celery's ``Control`` bootstep only starts a worker's mailbox when the transport
   declares fanout. Each worker's mailbox queue is then subscribed to the SNS topic of
   ``celery.pidbox``; a broadcast (``celery inspect``, Flower, ``revoke``) is one SNS publish.
2. **Remote control (replies).** ``Channel._lookup`` routes a reply (direct exchange
   ``reply.celery.pidbox``, routing key = the asker's id) to the asker's reply queue,
   ``<id>.reply.celery.pidbox`` (kombu's ``Mailbox.get_reply_queue``). The SQS transport
   keeps exchange bindings in each process's memory, so a worker never knows the binding
   the asker made and would drop the reply as undeliverable.
3. **Consumers without an event loop.** Flower (and ``celery events``) receive
   synchronously, from a thread without kombu's hub. For no-ack queues (event queues,
   reply queues) the stock channel deletes each received message through its
   asynchronous (pycurl) client, which needs that hub, and the receiver fails with
   ``'NoneType' object has no attribute 'on_close'``. ``Channel._delete_message`` deletes
   through the boto3 client instead when there is no hub.
4. **Events (fanout).** ``tasks/monitoring.py`` declares Celery's ``celeryev`` exchange
   as fanout on SQS, so events reach Flower in another process through SNS.
5. **A channel closed mid-poll.** At a worker's shutdown the mailbox's channel closes
   while its last long poll is in flight; when that poll returns, the stock ``_loop1``
   reads ``self.connection.polling_interval`` from a channel whose connection is gone and
   logs ``Error in timer: AttributeError`` (an ERROR line, which the stack's worker-errors
   alarm counts). ``Channel._loop1`` stops polling instead.
6. **A deleted queue's cached URL.** kombu caches queue URLs under their SQS names but
   ``_delete`` drops the entry under the AMQP name, so a reply queue re-declared after
   kombu deleted it (the next broadcast from the same process: same asker id, same name)
   resolves to the dead URL and fails with ``QueueDoesNotExist``. ``Channel._delete``
   drops the SQS name's entry too.
7. **One client per process.** kombu makes a boto3 session and client for every channel,
   and every connection of a producer pool has its own: on a web process's first burst of
   uploads each gunicorn thread's first enqueue made one (about 60 ms of CPU each, loading
   the service's model), as did each of a worker's connections at its start.
   ``Channel._new_boto_client`` makes each kind of client once per process and settings and
   shares it (boto3's clients are thread-safe); clients with expiring STS credentials, or
   with a configuration of their own (kombu's short-timeout release client), are still made
   each time.

Queues and topics this makes on an account (names carry ``SQS_QUEUE_PREFIX``): the SNS
topics ``<prefix>celery-pidbox`` and ``<prefix>celeryev``, unless ``SNS_CONTROL_TOPIC_ARN`` and
``SNS_EVENTS_TOPIC_ARN`` name topics that exist (the stack's: kombu's ``predefined_exchanges``,
so no process calls ``CreateTopic``, which AWS refuses for a topic that has other tags, and
which needs ``sns:TagResource``); one mailbox queue per worker,
``<prefix><hostname>-celery-pidbox``, subscribed to the first topic and deleted (with its
subscription) when the worker shuts down cleanly (``delete_mailbox``), or by the sweeper's
``prune_mailboxes`` once a worker killed outright answers no ping; one reply queue per
broadcast that waits for replies, deleted by kombu once the replies are collected; one event
queue per Flower process (``tasks/monitoring.py``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from kombu.pidbox import Mailbox
from kombu.transport import SQS

logger = logging.getLogger(__name__)
MAILBOX_SUFFIX, REPLY_SUFFIX = "-celery-pidbox", "-reply-celery-pidbox"
REPLY_EXCHANGE = Mailbox.reply_exchange_fmt  # 'reply.%s.pidbox'
_clients: dict[tuple[Any, ...], Any] = {}  # this process's boto3 clients, by what made them (change 7)
_clients_lock = threading.Lock()


def _after_fork() -> None:
    """A child starts with no clients and a free lock (a parent's thread may have held it at the fork)."""
    global _clients_lock
    _clients.clear()
    _clients_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)


def _is_reply_exchange(exchange: str) -> bool:
    head, _, tail = REPLY_EXCHANGE.partition("%s")
    return exchange.startswith(head) and exchange.endswith(tail)


class Channel(SQS.Channel):
    """An SQS channel that delivers mailbox replies across processes and works without a hub."""

    def _lookup(self, exchange: str, routing_key: str, default: str | None = None) -> list[str]:
        if exchange and _is_reply_exchange(exchange) and not self.state.exchanges.get(exchange, {}).get("table"):
            return [f"{routing_key}.{exchange}"]  # kombu's Mailbox.get_reply_queue names it so
        return super()._lookup(exchange, routing_key, default)

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        super()._delete(queue, *args, **kwargs)
        self._queue_cache.pop(self.canonical_queue_name(queue), None)

    def _loop1(self, queue: str, messages_fetched: Any = None) -> None:
        if self.connection is None:  # closed while this poll was in flight: nothing more to poll
            return
        super()._loop1(queue, messages_fetched)

    def _new_boto_client(
        self,
        service: Any,
        region: Any,
        access_key_id: Any,
        secret_access_key: Any,
        session_token: Any = None,
        config: Any = None,
    ) -> Any:
        """Return this process's client for these settings, made on first use (change 7)."""
        if session_token is not None or config is not None:
            return super()._new_boto_client(service, region, access_key_id, secret_access_key, session_token, config)
        made = (service, region, access_key_id, secret_access_key)
        with _clients_lock:  # one thread makes it; the others wait for it rather than make their own
            if (client := _clients.get(key := self._client_key(*made))) is None:
                for forked in [k for k in _clients if k[0] != key[0]]:  # a parent's: not to be used after fork
                    del _clients[forked]
                client = _clients[key] = super()._new_boto_client(*made)
                # botocore rewrites the retries of the options it is given, in place: file it under both
                _clients[self._client_key(*made)] = client
        return client

    def _client_key(self, *made: Any) -> tuple[Any, ...]:
        options = repr(self.transport_options.get("client-config"))
        return (os.getpid(), *made, self.endpoint_url, self.is_secure, options)

    def _delete_message(self, queue_name: str, message: dict[str, Any]) -> None:
        if self.hub is not None:
            super()._delete_message(queue_name, message)
            return
        self.sqs(queue=queue_name).delete_message(
            QueueUrl=self._new_queue(queue_name), ReceiptHandle=message["ReceiptHandle"]
        )


class Transport(SQS.Transport):
    """kombu's SQS transport with ``Channel`` above; it fans out (through SNS)."""

    Channel = Channel
    implements = SQS.Transport.implements.extend(exchange_type=frozenset(["direct", "fanout"]))


def delete_mailbox(app: Any, hostname: str) -> None:
    """Delete a worker's mailbox queue and its SNS subscription (at the worker's clean shutdown)."""
    mailbox = app.control.mailbox
    name = mailbox.get_queue(hostname).name
    try:
        with app.connection_for_write() as conn:
            channel = conn.default_channel
            channel.exchange_declare(exchange=mailbox.exchange.name, type="fanout")  # known here as fanout
            channel._delete(name, exchange=mailbox.exchange.name)
            # This channel never subscribed the queue, so it holds no subscription ARN to remove:
            # remove the topic's subscriptions whose queue is gone instead (this one, and any left).
            remove_gone_subscriptions(channel, mailbox.exchange.name)
        logger.info("mailbox deleted", extra={"queue": name})
    except Exception as exc:
        logger.warning("mailbox not deleted", extra={"queue": name, "error": repr(exc)})


def prune_mailboxes(app: Any, older_than: float = 300, ping_timeout: float = 3) -> list[str]:
    """Delete the mailbox queues (and SNS subscriptions) of workers that are gone; return their names.

    A worker killed outright (kill -9, a lost instance) leaves its mailbox subscribed to the
    control topic, collecting every broadcast for SQS's retention period. A mailbox is
    gone when its worker answers neither of two pings and the queue is older than
    ``older_than`` seconds (a worker that is starting has made its queue but may not answer yet).
    """
    live = {host for _ in range(2) for reply in app.control.ping(timeout=ping_timeout) or [] for host in reply}
    mailbox = app.control.mailbox
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        keep = {channel.canonical_queue_name(mailbox.get_queue(host).name) for host in live}
        sqs = channel.sqs()
        pages = sqs.get_paginator("list_queues").paginate(QueueNamePrefix=channel.queue_name_prefix)
        urls = [url for page in pages for url in page.get("QueueUrls", [])]
        gone = []
        for url in urls:
            name = url.rsplit("/", 1)[1]
            if not name.endswith(MAILBOX_SUFFIX) or name.endswith(REPLY_SUFFIX) or name in keep:
                continue
            created = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["CreatedTimestamp"])["Attributes"]
            if time.time() - float(created["CreatedTimestamp"]) < older_than:
                continue
            sqs.delete_queue(QueueUrl=url)
            channel._queue_cache.pop(name, None)
            gone.append(name)
            logger.info("mailbox of a gone worker deleted", extra={"queue": name})
        if gone:
            channel.exchange_declare(exchange=mailbox.exchange.name, type="fanout")
            remove_gone_subscriptions(channel, mailbox.exchange.name)
    return gone


def remove_gone_subscriptions(channel: Any, exchange: str) -> list[str]:
    """Unsubscribe the queues that no longer exist from ``exchange``'s topic; return their names.

    kombu does this itself (``remove_stale_sns_subscriptions``) only for the topics it made: with
    ``predefined_exchanges`` it skips it, so for the stack's topics it is done here.
    """
    topic = channel.predefined_exchanges.get(exchange, {}).get("arn")
    if topic is None:
        channel.remove_stale_sns_subscriptions(exchange)
        return []
    sqs, sns = channel.sqs(), channel.fanout.get_client(exchange)
    gone = []
    for page in sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=topic):
        for subscription in page["Subscriptions"]:
            if subscription["Protocol"] != "sqs":
                continue
            *_, account, queue = subscription["Endpoint"].split(":")
            try:  # asked one by one, as kombu does: a queue made a moment ago may not be listed yet
                sqs.get_queue_url(QueueName=queue, QueueOwnerAWSAccountId=account)
            except sqs.exceptions.QueueDoesNotExist:
                sns.unsubscribe(SubscriptionArn=subscription["SubscriptionArn"])
                gone.append(queue)
    return gone
