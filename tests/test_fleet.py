"""A burst on a scaling worker fleet: no video lost or done twice while workers come and go.

A small controller applies the worker group's scaling rule (desired = ceil(backlog ÷ target),
between 1 and 4) to moto server's autoscaling group every half second and keeps one local
``celery worker`` per instance, each with its own stand-in for the instance metadata service.
moto, like AWS, removes only instances that are not protected from scale-in, that is idle
workers (``tasks/instance.py``); a removed instance's worker sees its lifecycle state turn
``Terminated`` and shuts down. During the burst one busy worker gets a Spot interruption notice.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from domain.extensions import get_settings
from domain.storage import aws_client
from ops.aws import ensure_queues, queue_url
from tests.conftest import Worker, post_upload, signup_and_login, unique_email, wait_for
from tests.test_e2e import row
from tests.test_instance import FakeMetadata
from tests.test_metrics import worker_group  # noqa: F401  (a fixture)

pytestmark = pytest.mark.e2e
QUEUE = {"SQS_QUEUE_NAME": "fleet"}
TARGET, MIN_SIZE, MAX_SIZE, UPLOADS = 2, 1, 4, 20


@dataclass
class Member:
    """One instance of the group: its worker process and its metadata service."""

    worker: Worker
    metadata: FakeMetadata
    leaving: str = ""


@dataclass
class Fleet:
    """The controller: the scaling rule on moto's group, one local worker per instance."""

    app: Flask
    group: str
    env: dict[str, str]
    logs: Path
    members: dict[str, Member] = field(default_factory=dict)
    events: list[tuple[float, str, str]] = field(default_factory=list)
    largest_backlog: int = 0
    stopped: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.autoscaling = aws_client("autoscaling", get_settings(self.app))
        self.sqs = aws_client("sqs", get_settings(self.app))
        self.url = queue_url(get_settings(self.app), self.sqs)

    def backlog(self) -> int:
        attributes = self.sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["ApproximateNumberOfMessages"])
        return int(attributes["Attributes"]["ApproximateNumberOfMessages"])

    def instances(self) -> list[dict[str, Any]]:
        groups = self.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[self.group])
        return groups["AutoScalingGroups"][0]["Instances"]

    def tick(self) -> None:
        backlog = self.backlog()
        self.largest_backlog = max(self.largest_backlog, backlog)
        desired = min(MAX_SIZE, max(MIN_SIZE, math.ceil(backlog / TARGET)))
        self.autoscaling.set_desired_capacity(AutoScalingGroupName=self.group, DesiredCapacity=desired)
        in_group = {i["InstanceId"] for i in self.instances()}
        for instance_id in in_group - self.members.keys():  # scale-out: a new instance boots its worker
            self.start(instance_id)
        for instance_id, member in self.members.items():
            if instance_id not in in_group and not member.leaving:  # scale-in: the group removed it
                member.leaving, member.metadata.lifecycle = "scale-in", "Terminated"
                self.event("scale-in", instance_id)
            elif member.worker.proc.poll() is not None and instance_id in in_group:
                # its worker is gone (a Spot interruption): the group replaces the instance
                self.autoscaling.terminate_instance_in_auto_scaling_group(
                    InstanceId=instance_id, ShouldDecrementDesiredCapacity=True
                )
                self.event("terminated", instance_id)

    def start(self, instance_id: str) -> None:
        metadata = FakeMetadata(instance_id)
        threading.Thread(target=metadata.serve_forever, daemon=True).start()
        on_ec2 = {"EC2_METADATA_URL": metadata.url, "WORKER_ASG_NAME": self.group}
        name = f"fleet-{len(self.members)}"
        worker = Worker({**self.env, **on_ec2}, self.logs / f"{name}.log", name, concurrency=1)
        self.members[instance_id] = Member(worker, metadata)
        self.event("launch", instance_id)

    def spot_notice(self) -> str | None:
        """Give a busy (protected) worker a Spot interruption notice; return its instance."""
        for instance in self.instances():
            member = self.members.get(instance["InstanceId"])
            if member and instance["ProtectedFromScaleIn"] and not member.leaving:
                member.leaving = "spot"
                member.metadata.spot = {"action": "terminate", "time": "2026-11-28T05:02:00Z"}
                self.event("spot", instance["InstanceId"])
                return instance["InstanceId"]
        return None

    def story(self) -> str:
        """What happened, for a failure: the events, and each worker's exit code and last log line."""
        start = self.events[0][0] if self.events else 0.0
        lines = [f"{at - start:.1f}s {what} {self.members[i].worker.log.stem}" for at, what, i in list(self.events)]
        for member in list(self.members.values()):
            last = (member.worker.text().strip().splitlines() or [""])[-1]
            lines.append(f"{member.worker.log.stem} exit={member.worker.proc.poll()} last: {last[:200]}")
        return "; ".join(lines)

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        """``wait_for``, failing with the fleet's story."""
        try:
            return wait_for(predicate, timeout, interval=0.5, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {self.story()}") from None

    def event(self, what: str, instance_id: str) -> None:
        self.events.append((time.monotonic(), what, instance_id))

    def run(self) -> None:
        while not self.stopped.wait(0.5):
            self.tick()

    def stop(self) -> None:
        self.stopped.set()
        for member in self.members.values():
            member.worker.stop()
            member.metadata.shutdown()
            member.metadata.server_close()


@pytest.fixture
def fleet(
    make_app: Callable[..., Flask],
    base_env: dict[str, str],
    worker_group: str,  # noqa: F811
    tmp_path: Path,
) -> Iterator[Fleet]:
    app = make_app(QUEUE, USER_MAX_ACTIVE_VIDEOS=UPLOADS, USER_MAX_UPLOADS_PER_DAY=UPLOADS)
    with app.app_context():
        ensure_queues(get_settings(app))
    aws_client("autoscaling", get_settings(app)).update_auto_scaling_group(
        AutoScalingGroupName=worker_group, MinSize=MIN_SIZE, MaxSize=MAX_SIZE, DesiredCapacity=MIN_SIZE
    )
    env = {**base_env, **QUEUE, "INSTANCE_CHECK_SECONDS": "0.5", "SHUTDOWN_GRACE_SECONDS": "2"}
    controller = Fleet(app, worker_group, env, tmp_path)
    thread = threading.Thread(target=controller.run, daemon=True)
    thread.start()
    yield controller
    controller.stop()
    thread.join(10)


def test_a_burst_on_a_scaling_fleet_processes_every_video_once(fleet: Fleet, clip: Callable[[str], Path]) -> None:
    app = fleet.app
    fleet.wait(lambda: any("ready." in m.worker.text() for m in fleet.members.values()), 120, "a worker ready")
    client = app.test_client()
    headers = signup_and_login(client, unique_email())
    started = time.monotonic()
    ids = []
    for _ in range(UPLOADS):
        answer = post_upload(client, headers, clip("small.mp4"))
        assert answer.status_code == 202, answer.json
        ids.append(answer.json["video_id"])

    def processed() -> list[str]:
        return [i for i in ids if (r := row(app, i)) is not None and r.status == "processed"]

    fleet.wait(lambda: len(processed()) >= 3, 300, "3 videos processed")
    spot = fleet.wait(fleet.spot_notice, 120, "a busy worker for the Spot notice")
    fleet.wait(lambda: fleet.members[spot].worker.proc.poll() is not None, 180, "the Spot worker gone")
    fleet.wait(lambda: len(processed()) == UPLOADS, 600, "every video processed")
    drained = time.monotonic() - started

    rows = [row(app, i) for i in ids]
    handed_back = [line for m in fleet.members.values() for line in m.worker.lines("interrupted; row handed back")]
    # Each hand-back (a worker leaving mid-job) costs one attempt, and nothing else does.
    attempts = [(r.attempts, 1 + sum(r.id in line for line in handed_back)) for r in rows]
    assert all(r.processed_key for r in rows) and all(a == b for a, b in attempts), attempts

    def done_lines() -> list[str]:  # each is logged just after its row's commit
        return [line for m in fleet.members.values() for line in m.worker.lines("msg=processed")]

    def each_done() -> list[str]:
        done = done_lines()
        return done if all(any(i in line for line in done) for i in ids) else []

    done = fleet.wait(each_done, 10, "a processed line for each video")
    for video_id in ids:  # exactly once: one worker recorded each result, whatever was handed back
        assert sum(video_id in line for line in done) == 1, video_id
    spot_worker = fleet.members[spot].worker
    assert spot_worker.lines("instance leaving: warm shutdown", "reason=spot")
    kinds = [what for _, what, _ in fleet.events]
    assert kinds.count("launch") >= MAX_SIZE, fleet.events  # scaled out to the maximum
    scale_ins = [(at, instance) for at, what, instance in fleet.events if what == "scale-in"]
    assert scale_ins, fleet.events
    scaled_in = fleet.members[scale_ins[0][1]]
    fleet.wait(lambda: scaled_in.worker.proc.poll() is not None, 180, "the first scaled-in worker gone")
    assert scaled_in.worker.lines("instance leaving: warm shutdown", "reason=scale-in")
    print(
        f"\nfleet: {UPLOADS} videos drained in {drained:.1f}s, largest backlog {fleet.largest_backlog}, "
        f"workers launched {kinds.count('launch')}, scale-ins {len(scale_ins)}, spot notices 1; "
        f"attempts {sorted(r.attempts for r in rows)}"
    )
