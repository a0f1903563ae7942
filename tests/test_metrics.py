"""The backlog metric the worker group scales on: measured from SQS, the group and the database, put into CloudWatch."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask

from config import load_settings
from domain.extensions import db, get_settings
from domain.models import User, Video, utcnow
from domain.storage import aws_client
from ops import metrics
from ops.aws import ensure_queues, queue_url
from ops.metrics import Backlog, metric_data


def test_backlog_per_instance_counts_an_empty_group_as_one() -> None:
    assert Backlog(12, 0, 0, 0, instances=4, oldest_age=0).per_instance == 3
    assert Backlog(5, 0, 0, 0, instances=0, oldest_age=0).per_instance == 5, "a group at zero still sees its backlog"


def test_metric_data_names_and_units() -> None:
    settings = load_settings({"SECRET_KEY": "x", "SQS_QUEUE_NAME": "videos"})
    data = {d["MetricName"]: d for d in metric_data(settings, Backlog(8, 1, 2, 3, 2, 42.5))}
    assert data["BacklogPerInstance"]["Value"] == 4 and data["DeadLetterMessages"]["Value"] == 3
    assert data["OldestWaitingVideoAge"] == {
        "MetricName": "OldestWaitingVideoAge",
        "Dimensions": [{"Name": "QueueName", "Value": "videos"}],
        "Value": 42.5,
        "Unit": "Seconds",
    }


@pytest.fixture
def worker_group(app: Flask) -> str:
    """An autoscaling group of two in-service instances in moto server."""
    ec2 = aws_client("ec2", get_settings(app))
    image = ec2.describe_images()["Images"][0]["ImageId"]
    subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    name = f"workers-{datetime.now(UTC):%H%M%S%f}"
    ec2.create_launch_template(
        LaunchTemplateName=name, LaunchTemplateData={"ImageId": image, "InstanceType": "c7g.large"}
    )
    aws_client("autoscaling", get_settings(app)).create_auto_scaling_group(
        AutoScalingGroupName=name,
        LaunchTemplate={"LaunchTemplateName": name, "Version": "$Latest"},
        MinSize=0,
        MaxSize=4,
        DesiredCapacity=2,
        VPCZoneIdentifier=subnet,
    )
    return name


def test_publish_puts_the_backlog_into_cloudwatch(
    make_app: Callable[..., Flask], app: Flask, worker_group: str
) -> None:
    flask_app = make_app(
        {"SQS_QUEUE_NAME": "metrics-test", "WORKER_ASG_NAME": worker_group, "METRICS_NAMESPACE": "vp-test"}
    )
    config = get_settings(flask_app)
    with flask_app.app_context():
        ensure_queues(config)
        sqs = aws_client("sqs", config)
        url = queue_url(config, sqs)
        sqs.purge_queue(QueueUrl=url)
        for n in range(6):
            sqs.send_message(QueueUrl=url, MessageBody=f"job {n}")
        user = User(email="metrics@example.com", password_hash="x")
        waited = utcnow() - timedelta(seconds=90)
        db.session.add(Video(owner=user, title="t", original_key="k", status="queued", updated_at=waited))
        db.session.commit()
    result = flask_app.test_cli_runner().invoke(args=["aws", "metrics"])
    assert "6 visible" in result.output and "2 worker(s): 3 per instance" in result.output, result.output

    cloudwatch = aws_client("cloudwatch", config)
    dimensions = [{"Name": "QueueName", "Value": "metrics-test"}]

    def latest(name: str) -> float:
        points = cloudwatch.get_metric_statistics(
            Namespace="vp-test",
            MetricName=name,
            Dimensions=dimensions,
            StartTime=utcnow() - timedelta(minutes=5),
            EndTime=utcnow() + timedelta(minutes=1),
            Period=60,
            Statistics=["Maximum"],
        )["Datapoints"]
        return max(p["Maximum"] for p in points)

    assert latest("BacklogPerInstance") == 3
    assert latest("Ready") == 1, "the deep check passed: database, S3 and SQS answered"
    assert latest("VisibleMessages") == 6 and latest("InServiceWorkers") == 2
    assert latest("DeadLetterMessages") == 0
    assert 90 <= latest("OldestWaitingVideoAge") < 600


def test_a_dependency_down_puts_ready_0(make_app: Callable[..., Flask], app: Flask) -> None:
    """The deep check is an alarm on Ready, not the load balancer's health check: S3's bucket gone reads 0."""
    flask_app = make_app(
        {"SQS_QUEUE_NAME": "ready-test", "METRICS_NAMESPACE": "vp-ready", "S3_BUCKET": "no-such-bucket"}
    )
    config = get_settings(flask_app)
    with flask_app.app_context():
        ensure_queues(config)
        results = metrics.publish_ready(config)
    assert results["s3"].startswith("error") and results["database"] == results["sqs"] == "ok", results
    points = aws_client("cloudwatch", config).get_metric_statistics(
        Namespace="vp-ready",
        MetricName="Ready",
        Dimensions=[{"Name": "QueueName", "Value": "ready-test"}],
        StartTime=utcnow() - timedelta(minutes=5),
        EndTime=utcnow() + timedelta(minutes=1),
        Period=60,
        Statistics=["Minimum"],
    )["Datapoints"]
    assert [p["Minimum"] for p in points] == [0.0]
