"""Logs shipped to CloudWatch Logs (``LOG_GROUP``), where the stack's error alarm reads them."""

from __future__ import annotations

import logging
import os
import uuid
from typing import Any

from flask import Flask

from deploy.envfile import environment
from domain.extensions import get_settings
from domain.storage import aws_client
from ops.logs import CloudWatchHandler, log_context

ALARM_PATTERN = '"level=ERROR"'  # WorkerErrorsFilter's pattern in deploy/cloudformation.yaml


def test_each_role_ships_to_its_own_group() -> None:
    config = {"S3_BUCKET": "b", "LOG_GROUP_PREFIX": "/stack/"}
    for role in ("web", "worker", "ops"):
        env = environment(config, lambda arn: "", {}, role)
        assert env["LOG_GROUP"] == f"/stack/{role}" and "LOG_GROUP_PREFIX" not in env


def test_records_of_a_process_and_its_forked_child_reach_the_group(app: Flask) -> None:
    group = f"/test/worker-{uuid.uuid4().hex[:8]}"
    logs = aws_client("logs", get_settings(app))
    logs.create_log_group(logGroupName=group)
    handler = CloudWatchHandler(get_settings(app).replace(LOG_GROUP=group))
    logger = logging.getLogger(f"test.ship.{group}")
    logger.propagate, logger.level = False, logging.INFO
    logger.addHandler(handler)
    try:
        logger.info("started")  # the parent's stream and its thread exist before the fork, as in a worker
        pid = os.fork()
        if pid == 0:  # a pool process: its own client, stream and thread
            code = 0
            try:
                with log_context(video_id="v-child"):
                    logger.error("job failed in the pool")
                handler.flush()
            except BaseException:
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        with log_context(video_id="v-parent", task_id="t-1"):
            logger.error("job failed")
        handler.flush()
    finally:
        logger.removeHandler(handler)
        handler.close()

    events: list[dict[str, Any]] = logs.filter_log_events(logGroupName=group, filterPattern=ALARM_PATTERN)["events"]
    messages = [e["message"] for e in events]
    assert len(messages) == 2, messages
    assert any('msg="job failed" video_id=v-parent task_id=t-1' in m for m in messages), messages
    assert any('msg="job failed in the pool" video_id=v-child' in m for m in messages), messages
    streams = {e["logStreamName"] for e in events}
    assert len(streams) == 2 and all(s.endswith(f"-{pid}") or s.endswith(f"-{os.getpid()}") for s in streams), streams
