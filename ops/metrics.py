"""Publish the queue's backlog to CloudWatch: the number the worker group scales on.

AWS's pattern for SQS workers is target tracking on *backlog per instance*: visible
messages ÷ in-service worker instances, with the target = acceptable latency ÷ average
processing time per video (docs/deploy-aws.md). A group scaled to zero counts as one
instance, so a backlog still reads as a backlog and the group grows from zero.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from config import Settings
from domain.extensions import db
from domain.models import Status, Video, utcnow
from domain.storage import aws_client
from ops import readiness
from ops.aws import dlq_url, queue_name, queue_url

logger = logging.getLogger(__name__)
COUNTS = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible", "ApproximateNumberOfMessagesDelayed"]


@dataclass(frozen=True)
class Backlog:
    """One reading of the queue, the dead-letter queue, the worker group and the oldest waiting video."""

    visible: int
    in_flight: int
    delayed: int
    dead: int
    instances: int
    oldest_age: float

    @property
    def per_instance(self) -> float:
        """Visible messages per in-service worker instance (a group at zero counts as one)."""
        return self.visible / max(self.instances, 1)


def in_service_instances(settings: Settings, autoscaling: Any = None) -> int:
    """Return the worker group's in-service instances; 1 without a group (a local worker)."""
    group = settings.WORKER_ASG_NAME
    if not group:
        return 1
    autoscaling = autoscaling or aws_client("autoscaling", settings)
    groups = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"]
    return sum(1 for g in groups for i in g.get("Instances", []) if i.get("LifecycleState") == "InService")


def oldest_waiting_age() -> float:
    """Return how long the oldest video waiting for a worker has waited, in seconds (0 when none waits)."""
    waiting = (Status.UPLOADED.value, Status.QUEUED.value)
    oldest = db.session.scalar(select(func.min(Video.updated_at)).where(Video.status.in_(waiting)))
    db.session.commit()
    if oldest is None:
        return 0.0
    return max((utcnow() - oldest).total_seconds(), 0.0)


def dead_letter_depth(settings: Settings, sqs: Any = None) -> int:
    """Return the number of messages in the dead-letter queue."""
    sqs = sqs or aws_client("sqs", settings, retries={"max_attempts": 1})
    dead = sqs.get_queue_attributes(QueueUrl=dlq_url(settings, sqs), AttributeNames=COUNTS[:1])["Attributes"]
    return int(dead.get(COUNTS[0], 0))


def measure(settings: Settings, sqs: Any = None, autoscaling: Any = None) -> Backlog:
    """Read the backlog: SQS's approximate counts, the group's size, the database's oldest waiting video."""
    sqs = sqs or aws_client("sqs", settings)
    work = sqs.get_queue_attributes(QueueUrl=queue_url(settings, sqs), AttributeNames=COUNTS)["Attributes"]
    return Backlog(
        visible=int(work.get(COUNTS[0], 0)),
        in_flight=int(work.get(COUNTS[1], 0)),
        delayed=int(work.get(COUNTS[2], 0)),
        dead=dead_letter_depth(settings, sqs),
        instances=in_service_instances(settings, autoscaling),
        oldest_age=oldest_waiting_age(),
    )


def metric_data(settings: Settings, backlog: Backlog) -> list[dict[str, Any]]:
    """Return the CloudWatch datums for one reading, dimensioned by queue name."""
    dimensions = [{"Name": "QueueName", "Value": queue_name(settings)}]
    values = {
        "BacklogPerInstance": (backlog.per_instance, "Count"),
        "VisibleMessages": (backlog.visible, "Count"),
        "InFlightMessages": (backlog.in_flight, "Count"),
        "DeadLetterMessages": (backlog.dead, "Count"),
        "InServiceWorkers": (backlog.instances, "Count"),
        "OldestWaitingVideoAge": (backlog.oldest_age, "Seconds"),
    }
    return [
        {"MetricName": name, "Dimensions": dimensions, "Value": float(value), "Unit": unit}
        for name, (value, unit) in values.items()
    ]


def publish_ready(settings: Settings, cloudwatch: Any = None) -> dict[str, str]:
    """Run the deep check (``/readyz``'s) and put ``Ready`` (1 or 0); return the checks.

    The stack alarms when it is below 1, or missing: the load balancer checks only the shallow
    ``/healthz``, so a database failover replaces no web instance, and this says it happened.
    """
    results = readiness.check()
    datum = {
        "MetricName": "Ready",
        "Dimensions": [{"Name": "QueueName", "Value": queue_name(settings)}],
        "Value": 1.0 if readiness.ready(results) else 0.0,
        "Unit": "Count",
    }
    cloudwatch = cloudwatch or aws_client("cloudwatch", settings)
    cloudwatch.put_metric_data(Namespace=settings.METRICS_NAMESPACE, MetricData=[datum])
    if not readiness.ready(results):
        logger.warning("not ready", extra=results)
    return results


def publish(settings: Settings, cloudwatch: Any = None) -> Backlog:
    """Put ``Ready``, then measure and put the backlog into ``METRICS_NAMESPACE``; return the reading."""
    cloudwatch = cloudwatch or aws_client("cloudwatch", settings)
    publish_ready(settings, cloudwatch)
    backlog = measure(settings)
    cloudwatch.put_metric_data(Namespace=settings.METRICS_NAMESPACE, MetricData=metric_data(settings, backlog))
    logger.info(
        "backlog published",
        extra={"visible": backlog.visible, "instances": backlog.instances, "per_instance": backlog.per_instance},
    )
    return backlog
