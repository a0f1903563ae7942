"""kombu's SQS transport, able to serve a consumer that has no event loop.

Flower (and ``celery events``) receive events synchronously, from a thread without
kombu's hub. For no-ack queues, like an event queue, the stock channel deletes each
received message through its asynchronous (pycurl) client, which needs that hub, and
the receiver fails with ``'NoneType' object has no attribute 'on_close'``. Here such a
channel deletes through its boto3 client instead; everything else is kombu's.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import SQS


class Channel(SQS.Channel):
    """An SQS channel that falls back to the synchronous client without a hub."""

    def _delete_message(self, queue_name: str, message: dict[str, Any]) -> None:
        if self.hub is not None:
            super()._delete_message(queue_name, message)
            return
        self.sqs(queue=queue_name).delete_message(
            QueueUrl=self._new_queue(queue_name), ReceiptHandle=message["ReceiptHandle"]
        )


class Transport(SQS.Transport):
    """kombu's SQS transport with ``Channel`` above."""

    Channel = Channel
