"""Reading dead-lettered messages."""

from __future__ import annotations

import base64
import json

from ops.dlq import describe


def test_reads_a_kombu_message() -> None:
    inner = base64.b64encode(json.dumps([["vid-1"], {}, {}]).encode()).decode()
    envelope = {"body": inner, "headers": {"task": "tasks.process_video", "id": "t-1"}}
    body = base64.b64encode(json.dumps(envelope).encode()).decode()
    assert describe(body) == {"task": "tasks.process_video", "task_id": "t-1", "video_id": "vid-1"}


def test_garbage_is_described_as_unknown() -> None:
    assert describe("this is not a celery message") == {"task": None, "task_id": None, "video_id": None}
