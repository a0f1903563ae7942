"""What this project changes in kombu, Celery, prometheus_client and Werkzeug, shown by behaviour.

Each patch (docs/upstream.md) has two tests: the stock library still behaves as the patch
assumes (when upstream changes that, the test fails and says the patch can go), and the
patched one behaves as the product needs. They run against moto server: moto's in-process
``mock_aws`` would also take over the other tests' clients once they exist.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pytest
from celery import Celery
from celery.events import event
from celery.worker.consumer.control import Control
from kombu import Connection
from kombu.transport import SQS
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from tasks import monitoring, sqs

STOCK, PATCHED = SQS.Transport, sqs.Transport


@pytest.fixture
def aws(aws_endpoint: str) -> Iterator[str]:
    """A kombu URL of moto server's SQS (SNS and SQS queues of this module carry its own prefix)."""
    yield f"sqs://testing:testing@{urlsplit(aws_endpoint).netloc}"


OPTIONS = {"region": "us-east-1", "is_secure": False, "queue_name_prefix": "upstream-"}
_connections: list[Connection] = []


def channel(transport: type, url: str) -> Any:
    _connections.append(conn := Connection(url, transport=transport, transport_options=OPTIONS))
    return conn.channel()


def gone(patch: int, reference: str) -> str:
    return f"upstream changed this ({reference}): check whether patch {patch} of docs/upstream.md can go"


def test_1_stock_sqs_does_not_say_it_fans_out_so_celery_starts_no_mailbox() -> None:
    app = Celery(set_as_current=False)
    for transport, starts in ((STOCK, False), (PATCHED, True)):
        consumer = SimpleNamespace(app=app, conninfo=Connection("sqs://", transport=transport))
        assert Control.include_if(None, consumer) is starts, (
            gone(1, "kombu #2335, #2372") if not starts else "remote control and Flower's commands work"
        )


def test_2_stock_sqs_drops_a_reply_whose_binding_was_made_by_the_asker(aws: str) -> None:
    assert channel(STOCK, aws)._lookup("reply.celery.pidbox", "asker") == [], gone(2, "not reported upstream")
    assert channel(PATCHED, aws)._lookup("reply.celery.pidbox", "asker") == ["asker.reply.celery.pidbox"]


def _message(ch: Any, queue: str) -> dict[str, Any]:
    ch.queue_declare(queue)
    ch._put(queue, {"body": "x", "properties": {"delivery_info": {}}, "headers": {}})
    return ch.sqs(queue=queue).receive_message(QueueUrl=ch._new_queue(queue))["Messages"][0]


def test_3_stock_sqs_deletes_a_no_ack_message_only_with_an_event_loop(aws: str) -> None:
    stock = channel(STOCK, aws)
    with pytest.raises(AttributeError, match="on_close"):  # kombu #746, #926
        stock._delete_message("events", _message(stock, "events"))
    patched = channel(PATCHED, aws)
    patched._delete_message("events-2", _message(patched, "events-2"))
    url = patched._new_queue("events-2")
    attributes = patched.sqs().get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    left = [attributes[f"ApproximateNumberOfMessages{kind}"] for kind in ("", "NotVisible")]
    assert left == ["0", "0"], "deleted through boto3, without a hub"


def test_4_celery_declares_its_event_exchange_as_topic_on_sqs(aws: str) -> None:
    with Connection(aws, transport=STOCK, transport_options=OPTIONS) as conn:
        assert event.get_exchange(conn).type == "topic", gone(4, "celery #4279; fanout is Redis's only")
        assert monitoring.get_exchange(conn).type == "fanout", "events reach Flower in another process"


def test_5_a_stock_channel_closed_mid_poll_fails_when_its_poll_returns(aws: str) -> None:
    for transport, fails in ((STOCK, True), (PATCHED, False)):
        ch = channel(transport, aws)
        ch.queue_declare("q")
        ch.close()
        if fails:
            with pytest.raises(AttributeError, match="polling_interval"):
                ch._loop1("q")
        else:
            assert ch._loop1("q") is None, "stops polling quietly"


def test_6_stock_sqs_keeps_a_deleted_queues_url_under_its_sqs_name(aws: str) -> None:
    for transport, kept in ((STOCK, True), (PATCHED, False)):
        ch = channel(transport, aws)
        ch.queue_declare("asker.reply.celery.pidbox")
        ch._delete("asker.reply.celery.pidbox")
        cached = ch.canonical_queue_name("asker.reply.celery.pidbox") in ch._queue_cache
        assert cached is kept, gone(6, "not reported upstream") if kept else "a re-declared queue is looked up again"


def test_7_stock_sqs_makes_a_boto3_client_per_channel(aws: str) -> None:
    assert channel(STOCK, aws).sqs() is not channel(STOCK, aws).sqs(), gone(7, "not reported upstream")
    assert channel(PATCHED, aws).sqs() is channel(PATCHED, aws).sqs(), "one client per process and settings"


def test_8_prometheus_client_takes_its_storage_from_values_value_class(tmp_path: Path) -> None:
    script = (
        "from prometheus_client import Counter, values\n"
        "values.ValueClass = values.MultiProcessValue()\n"
        "Counter('videoproc_probe', 'probe').inc()\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
    assert [p.name.split("_")[0] for p in tmp_path.iterdir()] == ["counter"], "samples went to files (tasks/celery.py)"


def test_9_werkzeug_asks_the_request_for_each_file_parts_stream() -> None:
    opened: list[Any] = []

    class Watching(Request):  # as app/spool.py's UploadRequest does
        def _get_file_stream(self, *args: Any, **kwargs: Any) -> Any:
            opened.append(stream := super()._get_file_stream(*args, **kwargs))
            return stream

    data = {"title": "t", "video_file": (io.BytesIO(b"\0" * 10), "x.mp4")}
    with Watching(EnvironBuilder(method="POST", data=data).get_environ()) as request:
        assert request.files["video_file"].stream is opened[0], gone(9, "Werkzeug's multipart parser")
        assert len(opened) == 1, "asked for file parts only"
