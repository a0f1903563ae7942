"""AWS clients made once per process: shared by kombu's channels (tasks/sqs.py, change 7), made before serving.

Against moto server: the channels are real kombu SQS channels, which list the queues when they open.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import pytest
from flask import Flask

from app.warmup import warm_up
from tasks import sqs
from tests.conftest import free_port


def test_channels_of_different_connections_share_the_process_clients(app: Flask) -> None:
    celery = app.extensions["celery"]
    with celery.connection_for_write() as one, celery.connection_for_write() as two:
        first, second = one.default_channel, two.default_channel
        assert first is not second and first.connection is not second.connection
        assert first.sqs() is second.sqs()
        assert first.fanout.get_client() is second.fanout.get_client()  # SNS, for remote control and events
        assert first.sqs() is not first.fanout.get_client()
        assert first.sqs().list_queues(QueueNamePrefix="api-tests")["QueueUrls"]  # it works


def test_other_settings_expiring_credentials_and_a_forked_process_get_clients_of_their_own(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    celery = app.extensions["celery"]
    with celery.connection_for_write() as conn:
        channel = conn.default_channel
        shared = channel.sqs()
        assert channel._new_boto_client("sqs", "us-east-1", "testing", "testing") is shared
        assert channel._new_boto_client("sqs", "eu-west-1", "testing", "testing") is not shared
        assert channel._new_boto_client("sqs", "us-east-1", "other", "testing") is not shared
        # STS credentials expire: their clients are made each time, as kombu renews them
        sts = [channel._new_boto_client("sqs", "us-east-1", "a", "b", session_token="t") for _ in range(2)]
        assert sts[0] is not sts[1]
        monkeypatch.setattr(sqs.os, "getpid", lambda: -1)  # a child of this process after fork
        child = channel._new_boto_client("sqs", "us-east-1", "testing", "testing")
        assert child is not shared
        assert all(key[0] == -1 for key in sqs._clients), "the parent's clients are dropped, not reused"


def test_warm_up_makes_the_s3_client_and_a_broker_connection(make_app: Callable[..., Flask]) -> None:
    # kombu keeps producer pools per process, by the connection's settings (kombu.pools.producers):
    # settings of its own give this app a pool no earlier test has opened, as a new web process has
    flask_app = make_app({"SQS_QUEUE_NAME": "api-tests", "SQS_POLLING_INTERVAL": "0.25"})
    sqs._clients.clear()
    assert flask_app.extensions["storage"] == {}
    warm_up(flask_app)
    assert list(flask_app.extensions["storage"]) == [sqs.os.getpid()]
    assert {key[1] for key in sqs._clients} == {"sqs"} and len({id(c) for c in sqs._clients.values()}) == 1
    pool = flask_app.extensions["celery"].pool
    assert pool._dirty or not pool._resource.empty(), "the producer pool holds the connection it opened"


def test_warm_up_with_the_broker_down_logs_and_returns(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    flask_app = make_app({"SQS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"})
    logger = logging.getLogger("app.warmup")  # the app's loggers don't propagate to caplog's root handler
    logger.addHandler(caplog.handler)
    try:
        warm_up(flask_app)
    finally:
        logger.removeHandler(caplog.handler)
    assert [r.getMessage() for r in caplog.records if r.name == "app.warmup"] == ["broker warm-up failed"]
    assert flask_app.extensions["storage"], "the S3 client is made all the same"


def test_a_forked_child_starts_without_the_parents_clients(app: Flask) -> None:
    with app.extensions["celery"].connection_for_write() as conn:
        conn.default_channel.sqs()
    assert sqs._clients
    read, write = os.pipe()
    if (child := os.fork()) == 0:  # as a prefork pool process starts
        os.write(write, b"%d %d" % (len(sqs._clients), not sqs._clients_lock.locked()))
        os._exit(0)
    os.waitpid(child, 0)
    assert os.read(read, 16) == b"0 1"
