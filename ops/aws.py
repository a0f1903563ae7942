"""Provision and check the AWS resources: the bucket and the queue."""

from __future__ import annotations

import json
import logging
from typing import Any

from botocore.exceptions import ClientError

from config import Settings
from domain.storage import QUARANTINE, aws_client

logger = logging.getLogger(__name__)
MISSING_QUEUE = ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")


def queue_name(s: Settings) -> str:
    """Return the SQS name of the work queue (prefix included)."""
    return s.SQS_QUEUE_PREFIX + s.SQS_QUEUE_NAME


def queue_url(s: Settings, sqs: Any = None) -> str:
    """Return the work queue's URL, from settings or by name."""
    if s.SQS_QUEUE_URL:
        return s.SQS_QUEUE_URL
    sqs = sqs or aws_client("sqs", s)
    return sqs.get_queue_url(QueueName=queue_name(s))["QueueUrl"]


def dlq_name(s: Settings) -> str:
    """Return the SQS name of the dead-letter queue (prefix included)."""
    return s.SQS_QUEUE_PREFIX + s.SQS_DLQ_NAME


def queue_attributes(s: Settings, dlq_arn: str | None) -> dict[str, str]:
    """Return the attributes the work queue must have."""
    attributes = {
        "VisibilityTimeout": str(s.SQS_VISIBILITY_TIMEOUT),
        "ReceiveMessageWaitTimeSeconds": str(s.SQS_WAIT_TIME_SECONDS),
        "MessageRetentionPeriod": str(s.SQS_RETENTION_SECONDS),
    }
    if dlq_arn:
        policy = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": s.SQS_MAX_RECEIVE_COUNT}
        attributes["RedrivePolicy"] = json.dumps(policy)
    return attributes


def ensure_bucket(s: Settings) -> None:
    """Create the bucket if missing; abort multipart uploads left for a day, expire the quarantine; CORS."""
    s3 = aws_client("s3", s)
    bucket = s.S3_BUCKET
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError:
        kwargs: dict[str, Any] = {"Bucket": bucket}
        if s.AWS_REGION != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": s.AWS_REGION}
        s3.create_bucket(**kwargs)
        logger.info("bucket created", extra={"bucket": bucket})
    if s.CORS_ORIGINS:  # browsers PUT parts straight to the bucket (direct uploads) and read each part's ETag
        rule = {
            "AllowedOrigins": list(s.CORS_ORIGINS),
            "AllowedMethods": ["PUT", "GET", "HEAD"],
            "AllowedHeaders": ["*"],
            "ExposeHeaders": ["ETag"],
            "MaxAgeSeconds": 3600,
        }
        s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": [rule]})
    s3.put_bucket_lifecycle_configuration(
        Bucket=bucket,
        LifecycleConfiguration={
            "Rules": [
                {
                    "ID": "abort-incomplete-multipart-uploads",
                    "Status": "Enabled",
                    "Filter": {"Prefix": ""},
                    "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
                },
                {  # refused originals (``Storage.quarantine``): kept for a look, then gone
                    "ID": "expire-quarantine",
                    "Status": "Enabled",
                    "Filter": {"Prefix": QUARANTINE},
                    "Expiration": {"Days": s.QUARANTINE_DAYS},
                },
            ]
        },
    )


def _ensure(sqs: Any, name: str, attributes: dict[str, str], url: str | None = None) -> str:
    """Create a queue if missing, else reconcile its attributes; return its URL."""
    try:
        url = url or sqs.get_queue_url(QueueName=name)["QueueUrl"]
        sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
        return url
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in MISSING_QUEUE:
            raise
    logger.info("queue created", extra={"queue": name})
    return sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]


def dlq_url(s: Settings, sqs: Any = None) -> str:
    """Return the dead-letter queue's URL."""
    sqs = sqs or aws_client("sqs", s)
    return sqs.get_queue_url(QueueName=dlq_name(s))["QueueUrl"]


def ensure_queues(s: Settings) -> tuple[str, str]:
    """Create the dead-letter queue, the work queue (redriving to it), the webhooks and optimize queues.

    Return the first two. The webhooks and optimize queues have no dead-letter queue: a delivery
    or an optimize stage whose message is lost or dropped is still waiting in the database, and
    the sweeper sends it again (domain/webhooks.py, domain/optimize.py); one that kills its
    worker is given up after ``MAX_ATTEMPTS``.
    """
    sqs = aws_client("sqs", s)
    dead = _ensure(sqs, dlq_name(s), {"MessageRetentionPeriod": str(s.SQS_RETENTION_SECONDS)})
    arn = sqs.get_queue_attributes(QueueUrl=dead, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    _ensure(sqs, s.SQS_QUEUE_PREFIX + s.WEBHOOK_QUEUE_NAME, queue_attributes(s, None))
    _ensure(sqs, s.SQS_QUEUE_PREFIX + s.OPTIMIZE_QUEUE_NAME, queue_attributes(s, None))
    return _ensure(sqs, queue_name(s), queue_attributes(s, arn), s.SQS_QUEUE_URL), dead


def ping_queue(s: Settings) -> None:
    """Raise unless the work queue answers."""
    sqs = aws_client("sqs", s, retries={"max_attempts": 1}, read_timeout=5)
    sqs.get_queue_attributes(QueueUrl=queue_url(s, sqs), AttributeNames=["ApproximateNumberOfMessages"])
