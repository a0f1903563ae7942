"""Celery's own settings: fixed ones as module attributes, the rest from the environment's settings.

``celery_init_app`` loads this module, then applies ``environment_settings`` for the
broker, the queue and the time limits.
"""

from __future__ import annotations

from typing import Any

from config import Settings

# Delivery: a message is deleted from SQS only after its task returns. A job whose pool
# process dies while the worker lives (the OOM killer's usual victim) is retried at once by
# the worker's main process, which knows that run is over: the retry's delivery takes the
# row over (domain/jobs.py). Should that send fail, the message is rejected back to the queue;
# a worker that dies whole leaves its message for SQS to deliver again after the visibility
# timeout, when its heartbeat is stale.
task_acks_late = True
task_retry_on_worker_lost = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1

# No result backend: the database row is the job's state.
task_ignore_result = True
result_backend = None

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
task_track_started = False
worker_hijack_root_logger = False
# Task events feed Flower; on SQS they fan out through SNS (see tasks/monitoring.py). No
# "task-sent" event: publishing it would put SNS on the upload's critical path.
worker_send_task_events = True
broker_connection_retry_on_startup = True
broker_connection_timeout = 5
# An upload whose publish fails is kept and answered with 503; don't stall the request.
task_publish_retry_policy = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}

# kombu's SQS transport, fixed for consumers without an event loop (Flower): tasks/sqs.py.
broker_transport = "tasks.sqs:Transport"

PROCESS_TASK = "tasks.process_video"
DELIVER_TASK = "tasks.deliver_webhook"  # on its own queue, read by the webhook workers (tasks/webhooks.py)
OPTIMIZE_TASK = "tasks.optimize_video"  # on its own queue, read by the optimize workers (tasks/optimize.py)
# An idle-priority job waits for the CPU whenever publishing needs it: its wall limits are this many times a job's.
IDLE_FACTOR = 10


def transport_options(s: Settings) -> dict[str, Any]:
    """Return kombu's SQS transport options for these settings."""
    endpoint = s.SQS_ENDPOINT_URL
    wait = s.SQS_WAIT_TIME_SECONDS
    options: dict[str, Any] = {
        "region": s.AWS_REGION,
        "is_secure": not endpoint or endpoint.startswith("https"),
        "queue_name_prefix": s.SQS_QUEUE_PREFIX,
        "visibility_timeout": s.SQS_VISIBILITY_TIMEOUT,
        "wait_time_seconds": wait,
        "polling_interval": s.SQS_POLLING_INTERVAL,
        # Fanout exchanges become SNS topics: how events reach Flower.
        "supports_fanout": True,
        # A long poll holds the socket open for `wait` seconds: reads must outlast it.
        "client-config": {"connect_timeout": 5, "read_timeout": wait + 10, "retries": {"max_attempts": 3}},
    }
    if s.SNS_CONTROL_TOPIC_ARN and s.SNS_EVENTS_TOPIC_ARN:  # both or neither (Settings)
        # The stack's topics for the fanout exchanges (remote control's broadcasts, Celery's
        # events): kombu publishes and subscribes to them, and never calls CreateTopic.
        options["predefined_exchanges"] = {
            "celery.pidbox": {"arn": s.SNS_CONTROL_TOPIC_ARN},
            "celeryev": {"arn": s.SNS_EVENTS_TOPIC_ARN},
        }
    # No `predefined_queues`, even with SQS_QUEUE_URL: kombu then refuses every other queue,
    # and remote control and Flower need queues of their own (tasks/sqs.py lists them).
    return options


def environment_settings(s: Settings) -> dict[str, Any]:
    """Return the Celery settings that depend on the environment."""
    queue = s.SQS_QUEUE_NAME
    return {
        "broker_url": s.CELERY_BROKER_URL,
        "broker_transport_options": transport_options(s),
        "task_default_queue": queue,
        "task_routes": {
            PROCESS_TASK: {"queue": queue},
            DELIVER_TASK: {"queue": s.WEBHOOK_QUEUE_NAME},
            OPTIMIZE_TASK: {"queue": s.OPTIMIZE_QUEUE_NAME},
        },
        "task_soft_time_limit": s.TASK_SOFT_TIME_LIMIT,
        "task_time_limit": s.TASK_TIME_LIMIT,
        # The optimize stage runs at idle CPU priority: publishing may starve it for a while.
        "task_annotations": {
            OPTIMIZE_TASK: {
                "soft_time_limit": s.TASK_SOFT_TIME_LIMIT * IDLE_FACTOR,
                "time_limit": s.TASK_TIME_LIMIT * IDLE_FACTOR,
            }
        },
    }
