"""Remote control on SQS, across processes: inspect, Flower's data, revoke and terminate, clean-up.

Each test has a queue prefix of its own, so its SNS topic ``<prefix>celery-pidbox`` reaches
only its own workers (the session's other workers have theirs).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable

import pytest
from flask import Flask

from domain.extensions import get_settings
from domain.storage import aws_client
from tasks.sqs import prune_mailboxes
from tests.conftest import ROOT, Worker, wait_for
from tests.test_reliability import (
    Stack,
    encode_frozen,
    ffmpeg_running,
    scratch_left,
    stack,  # noqa: F401  (a fixture)
)

pytestmark = pytest.mark.e2e


def settings() -> dict[str, str]:
    prefix = f"rc{uuid.uuid4().hex[:6]}-"
    return {
        "SQS_QUEUE_PREFIX": prefix,
        "SQS_VISIBILITY_TIMEOUT": "30",
        "HEARTBEAT_SECONDS": "2",
        "STALE_AFTER_SECONDS": "10",
    }


def queues(s: Stack) -> list[str]:
    sqs = aws_client("sqs", get_settings(s.app))
    urls = sqs.list_queues(QueueNamePrefix=s.env["SQS_QUEUE_PREFIX"]).get("QueueUrls", [])
    return sorted(u.rsplit("/", 1)[1] for u in urls)


def subscriptions(s: Stack) -> list[str]:
    found = aws_client("sns", get_settings(s.app)).list_subscriptions()["Subscriptions"]
    return [x["Endpoint"].rsplit(":", 1)[1] for x in found if s.env["SQS_QUEUE_PREFIX"] in x["Endpoint"]]


def test_inspect_reaches_every_worker_and_their_mailboxes_go_with_them(
    stack: Callable[..., Stack],  # noqa: F811
    start_worker: Callable[..., Worker],
    clip: Callable,
    base_env: dict,
) -> None:
    s = stack(settings())
    a, b = start_worker("rc-a", s.env), start_worker("rc-b", s.env)
    ping = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tasks", "inspect", "ping", "--timeout", "10"],
        env={**os.environ, **base_env, **s.env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert "rc-a@" in ping.stdout and "rc-b@" in ping.stdout and "2 nodes online" in ping.stdout, ping.stdout

    video_id = s.upload(clip("portrait.mp4")).json["video_id"]
    inspect = s.app.extensions["celery"].control.inspect(timeout=5)
    with encode_frozen(s, video_id):  # the task is surely active while asked about
        active = {node: tasks for node, tasks in (inspect.active() or {}).items() if tasks}
        stats = inspect.stats() or {}
    assert len(active) == 1 and video_id in str(next(iter(active.values()))[0]["args"]), active
    assert {n.split("@")[0] for n in stats} == {"rc-a", "rc-b"}
    assert all(v["pool"]["max-concurrency"] == 1 for v in stats.values()), stats
    assert {t for node in (inspect.registered() or {}).values() for t in node} == {
        "tasks.process_video",
        "tasks.deliver_webhook",
        "tasks.optimize_video",
    }
    s.wait_status(video_id, "processed")

    prefix = s.env["SQS_QUEUE_PREFIX"]
    mailboxes = [q for q in queues(s) if q.endswith("-celery-pidbox")]
    assert sorted(m.removeprefix(prefix).split("_")[0] for m in mailboxes) == ["rc-a", "rc-b"], mailboxes
    assert not [q for q in queues(s) if "reply" in q], "each broadcast's reply queue is deleted once it is read"
    a.stop()
    b.stop()
    assert [q for q in queues(s) if q.endswith("-celery-pidbox")] == [], "a worker deletes its mailbox"
    assert subscriptions(s) == [], "and its SNS subscription"


def test_the_stacks_topics_are_used_as_they_are(
    stack: Callable[..., Stack],  # noqa: F811
    start_worker: Callable[..., Worker],
    app: Flask,
) -> None:
    """With the stack's topics named, kombu never calls CreateTopic (AWS refuses it for a topic with other tags)."""
    env = settings()
    prefix = env["SQS_QUEUE_PREFIX"]
    sns = aws_client("sns", get_settings(app))
    tags = [{"Key": "aws:cloudformation:stack-name", "Value": "videoproc"}]
    for name, topic in (("SNS_CONTROL_TOPIC_ARN", "control"), ("SNS_EVENTS_TOPIC_ARN", "events")):
        env[name] = sns.create_topic(Name=f"{prefix}stack-{topic}", Tags=tags)["TopicArn"]
    s = stack(env)
    worker = start_worker("rc-topics", s.env)
    replies = s.app.extensions["celery"].control.ping(timeout=5)
    assert [host.split("@")[0] for reply in replies for host in reply] == ["rc-topics"]
    control = sns.list_subscriptions_by_topic(TopicArn=env["SNS_CONTROL_TOPIC_ARN"])["Subscriptions"]
    assert [x["Endpoint"].rsplit(":", 1)[1].split("_")[0] for x in control] == [f"{prefix}rc-topics"]
    topics = [t["TopicArn"].rsplit(":", 1)[1] for t in sns.list_topics()["Topics"]]
    assert sorted(t for t in topics if t.startswith(prefix)) == [f"{prefix}stack-control", f"{prefix}stack-events"]
    worker.stop()
    assert sns.list_subscriptions_by_topic(TopicArn=env["SNS_CONTROL_TOPIC_ARN"])["Subscriptions"] == []


def test_an_operators_terminate_cancels_the_video(
    stack: Callable[..., Stack],  # noqa: F811
    start_worker: Callable[..., Worker],
    clip: Callable,
    base_env: dict,
) -> None:
    s = stack(settings())
    a = start_worker("a", s.env)
    video_id = s.upload(clip("portrait.mp4")).json["video_id"]
    with encode_frozen(s, video_id):
        task_id = s.row(video_id).task_id
        s.app.extensions["celery"].control.revoke(task_id, terminate=True)  # Flower's "terminate" button
        done = s.wait_status(video_id, "cancelled", timeout=30)
    wait_for(lambda: not ffmpeg_running(video_id), timeout=10)
    assert a.lines("revoked: cancelled", video_id) and done.processed_key is None
    wait_for(lambda: scratch_left(base_env, video_id) == [], timeout=10)


def test_the_mailbox_of_a_worker_killed_outright_is_pruned(
    stack: Callable[..., Stack],  # noqa: F811
    start_worker: Callable[..., Worker],
) -> None:
    s = stack(settings())
    start_worker("alive", s.env)
    killed = start_worker("killed", s.env)
    prefix = s.env["SQS_QUEUE_PREFIX"]

    def mailboxes() -> list[str]:
        return sorted(q.removeprefix(prefix).split("_")[0] for q in queues(s) if q.endswith("-celery-pidbox"))

    wait_for(lambda: mailboxes() == ["alive", "killed"] and len(subscriptions(s)) == 2, timeout=30)
    os.killpg(killed.proc.pid, signal.SIGKILL)  # the worker and its pool, no shutdown
    killed.proc.wait()
    assert mailboxes() == ["alive", "killed"], "nothing ran to delete it"

    celery_app = s.app.extensions["celery"]
    swept = s.app.test_cli_runner().invoke(args=["videos", "sweep", "--mailboxes"])
    assert "deleted 0 mailbox(es)" in swept.output, "mailboxes younger than 5 minutes are spared"
    gone = prune_mailboxes(celery_app, older_than=0)
    assert [g.removeprefix(prefix).split("_")[0] for g in gone] == ["killed"]
    assert mailboxes() == ["alive"] and len(subscriptions(s)) == 1
    assert [host.split("@")[0] for reply in celery_app.control.ping(timeout=3) for host in reply] == ["alive"]
