"""Read and redrive the dead-letter queue."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterator
from typing import Any

from config import Settings
from domain.storage import aws_client
from ops.aws import dlq_url, queue_url


def describe(body: str) -> dict[str, Any]:
    """Return task name, task id and video id from a kombu SQS message body (None where unreadable)."""
    found: dict[str, Any] = {"task": None, "task_id": None, "video_id": None}
    try:
        envelope = json.loads(base64.b64decode(body, validate=True))
        headers = envelope.get("headers") or {}
        found["task"], found["task_id"] = headers.get("task"), headers.get("id")
        args = json.loads(base64.b64decode(envelope["body"]))[0]
        found["video_id"] = args[0] if args else None
    except (binascii.Error, ValueError, TypeError, KeyError, IndexError, AttributeError):
        pass
    return found


def _receive(sqs: Any, url: str, visibility: int) -> Iterator[dict[str, Any]]:
    while True:
        messages = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=visibility, AttributeNames=["All"]
        ).get("Messages", [])
        if not messages:
            return
        yield from messages


def list_dead(s: Settings) -> list[dict[str, Any]]:
    """Return every dead-lettered message, described; each stays in the DLQ."""
    sqs = aws_client("sqs", s)
    url = dlq_url(s, sqs)
    rows, handles = [], []
    # Hidden while we list, so each is seen once; made visible again afterwards.
    for message in _receive(sqs, url, visibility=30):
        attributes = message.get("Attributes", {})
        rows.append(
            {
                "message_id": message["MessageId"],
                "receive_count": int(attributes.get("ApproximateReceiveCount", 0)),
                **describe(message["Body"]),
            }
        )
        handles.append(message["ReceiptHandle"])
    for handle in handles:
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=handle, VisibilityTimeout=0)
    return rows


def redrive(s: Settings, on_message: Callable[[dict[str, Any]], None] | None = None) -> int:
    """Move every message from the DLQ back to the work queue; return how many."""
    sqs = aws_client("sqs", s)
    source, target = dlq_url(s, sqs), queue_url(s, sqs)
    moved = 0
    for message in _receive(sqs, source, visibility=60):
        sqs.send_message(QueueUrl=target, MessageBody=message["Body"])  # sent before deleted: nothing lost
        sqs.delete_message(QueueUrl=source, ReceiptHandle=message["ReceiptHandle"])
        moved += 1
        if on_message:
            on_message(describe(message["Body"]))
    return moved
