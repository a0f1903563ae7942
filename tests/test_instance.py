"""Leaving the group without losing a job: scale-in protection while busy, a Spot notice's warm shutdown.

A real worker process, moto server's autoscaling group, and a stand-in for the EC2 instance metadata service.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from flask import Flask

from domain.extensions import get_settings
from domain.queue import enqueue_video
from domain.storage import aws_client
from ops.aws import ensure_queues
from tasks.instance import InstanceGuard, Metadata
from tests.conftest import Worker, wait_for
from tests.test_e2e import row, seed_video
from tests.test_metrics import worker_group  # noqa: F401  (a fixture)

pytestmark = pytest.mark.e2e


class FakeMetadata(ThreadingHTTPServer):
    """IMDSv2 for one instance: a token, its id, and a Spot notice once ``spot`` is set."""

    def __init__(self, instance_id: str) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.instance_id = instance_id
        self.spot: dict[str, str] | None = None
        self.lifecycle = "InService"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: FakeMetadata

    def _send(self, status: int, body: str = "") -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def do_PUT(self) -> None:
        ok = self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
        self._send(200, "token") if ok else self._send(400)

    def do_GET(self) -> None:
        if self.headers.get("X-aws-ec2-metadata-token") != "token":
            self._send(401)
            return
        answers = {
            "/latest/meta-data/instance-id": self.server.instance_id,
            "/latest/meta-data/spot/instance-action": json.dumps(self.server.spot) if self.server.spot else None,
            "/latest/meta-data/autoscaling/target-lifecycle-state": self.server.lifecycle,
        }
        body = answers.get(self.path)
        self._send(200, body) if body is not None else self._send(404)

    def log_message(self, *args: Any) -> None:
        pass


def group_instance(app: Flask, group: str) -> dict[str, Any]:
    groups = aws_client("autoscaling", get_settings(app)).describe_auto_scaling_groups(AutoScalingGroupNames=[group])
    return groups["AutoScalingGroups"][0]["Instances"][0]


@pytest.fixture
def metadata(app: Flask, worker_group: str) -> Iterator[FakeMetadata]:  # noqa: F811
    server = FakeMetadata(group_instance(app, worker_group)["InstanceId"])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_guard_reads_the_metadata_service(app: Flask, worker_group: str, metadata: FakeMetadata) -> None:  # noqa: F811
    settings = get_settings(app).replace(WORKER_ASG_NAME=worker_group, EC2_METADATA_URL=metadata.url)
    guard = InstanceGuard(settings)
    assert guard.instance_id == metadata.instance_id and guard.leaving() is None
    guard.protect(True)
    assert group_instance(app, worker_group)["ProtectedFromScaleIn"] is True
    metadata.lifecycle = "Terminated"
    assert guard.leaving() == "scale-in"
    metadata.spot = {"action": "terminate", "time": "2026-11-28T05:00:00Z"}
    assert guard.leaving() == "spot"
    assert Metadata(metadata.url).get("no/such/path") is None


def test_spot_notice_hands_the_running_job_to_another_worker(
    make_app: Callable[..., Flask],
    app: Flask,
    worker_group: str,  # noqa: F811
    metadata: FakeMetadata,
    start_worker: Callable[..., Worker],
    clip: Callable[[str], Any],
) -> None:
    queue = {"SQS_QUEUE_NAME": "instance-test"}
    flask_app = make_app(queue)
    with flask_app.app_context():
        ensure_queues(get_settings(flask_app))
    on_ec2 = {
        **queue,
        "WORKER_ASG_NAME": worker_group,
        "EC2_METADATA_URL": metadata.url,
        "INSTANCE_CHECK_SECONDS": "0.5",
        "SHUTDOWN_GRACE_SECONDS": "2",
    }
    aws_client("autoscaling", get_settings(app)).set_instance_protection(
        InstanceIds=[metadata.instance_id], AutoScalingGroupName=worker_group, ProtectedFromScaleIn=True
    )
    spot = start_worker("spot", on_ec2)
    wait_for(lambda: group_instance(app, worker_group)["ProtectedFromScaleIn"] is False, timeout=30)  # idle: cleared

    video = seed_video(flask_app, clip("portrait.mp4").read_bytes())
    with flask_app.app_context():
        enqueue_video(video.id, video.task_id)
    wait_for(lambda: (r := row(flask_app, video.id)) and r.status == "processing" and r.progress >= 10, timeout=60)
    assert wait_for(lambda: group_instance(app, worker_group)["ProtectedFromScaleIn"], timeout=10), "busy: protected"

    metadata.spot = {"action": "terminate", "time": "2026-11-28T05:02:00Z"}
    spot.proc.wait(60)  # the warm shutdown: grace, then the job is handed back
    assert spot.lines("instance leaving: warm shutdown", "reason=spot")
    handed_back = row(flask_app, video.id)
    assert handed_back.status == "queued", handed_back.status

    start_worker("rescue", queue)
    done = wait_for(lambda: (r := row(flask_app, video.id)) and r.status == "processed" and r, timeout=180)
    assert done.attempts == 2 and done.processed_key
