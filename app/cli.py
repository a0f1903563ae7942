"""Operator commands: ``flask aws …`` and ``flask videos …``."""

from __future__ import annotations

import logging
import time

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from domain.extensions import get_settings
from domain.models import Status
from domain.queue import EnqueueError
from ops import dlq, metrics
from ops.aws import ensure_bucket, ensure_queues
from ops.sweeper import requeue, sweep

logger = logging.getLogger(__name__)

aws = AppGroup("aws", help="Provision and inspect the AWS resources.")
videos = AppGroup("videos", help="Operate on videos: sweep, retry.")


@aws.command("init")
def aws_init() -> None:
    """Create the bucket, the dead-letter queue and the work queue; reconcile their settings (idempotent)."""
    s = get_settings()
    ensure_bucket(s)
    click.echo(
        f"bucket  {s.S3_BUCKET}: ready (incomplete multipart uploads aborted after 1 day,"
        f" quarantine/ expired after {s.QUARANTINE_DAYS} days)"
    )
    work, dead = ensure_queues(s)
    click.echo(f"queue   {work}: ready (visibility {s.SQS_VISIBILITY_TIMEOUT}s)")
    click.echo(f"dlq     {dead}: ready (after {s.SQS_MAX_RECEIVE_COUNT} receives)")


@aws.command("dlq-list")
def dlq_list() -> None:
    """List the dead-lettered messages and the videos they belong to."""
    rows = dlq.list_dead(get_settings())
    for row in rows:
        click.echo(
            f"{row['message_id']}  video={row['video_id'] or '-'}  task={row['task'] or 'unreadable'}"
            f"  task_id={row['task_id'] or '-'}  received={row['receive_count']}"
        )
    click.echo(f"{len(rows)} message(s) in the dead-letter queue")


@aws.command("dlq-redrive")
def dlq_redrive() -> None:
    """Move every dead-lettered message back to the work queue."""
    moved = dlq.redrive(get_settings(), lambda row: click.echo(f"moved video={row['video_id'] or '-'}"))
    click.echo(f"{moved} message(s) moved back")


def _publish_metrics() -> None:
    try:
        backlog = metrics.publish(get_settings())
    except Exception as exc:  # a missed reading is not fatal: the next one comes in a minute
        click.echo(f"metrics not published: {type(exc).__name__}: {exc}", err=True)
        return
    click.echo(
        f"backlog {backlog.visible} visible, {backlog.in_flight} in flight, {backlog.dead} dead-lettered; "
        f"{backlog.instances} worker(s): {backlog.per_instance:g} per instance; oldest waits {backlog.oldest_age:.0f}s"
    )


@aws.command("metrics")
@click.option("--every", type=float, default=0, help="Repeat every N seconds (0: once).")
def aws_metrics(every: float) -> None:
    """Put BacklogPerInstance, the oldest waiting video's age and the DLQ depth into CloudWatch."""
    while True:
        _publish_metrics()
        if not every:
            return
        time.sleep(every)


def _prune_mailboxes() -> None:
    from tasks.sqs import prune_mailboxes  # kombu's side: only this needs it

    try:
        gone = prune_mailboxes(current_app.extensions["celery"])
    except Exception as exc:  # remote control's housekeeping must not fail the sweep
        logger.warning("mailboxes not pruned", extra={"error": repr(exc)})
        return
    click.echo(f"deleted {len(gone)} mailbox(es) of gone workers")


@videos.command("sweep")
@click.option("--every", type=float, default=0, help="Repeat every N seconds (0: once).")
@click.option("--metrics/--no-metrics", "with_metrics", default=False, help="Also publish the backlog metrics.")
@click.option("--mailboxes/--no-mailboxes", default=False, help="Also delete the mailboxes of gone workers.")
@click.option("--storage/--no-storage", default=True, help="Also delete objects and abort uploads that have no row.")
def videos_sweep(every: float, with_metrics: bool, mailboxes: bool, storage: bool) -> None:
    """Re-enqueue uploads that never reached the queue and jobs whose worker died; reconcile with SQS and S3."""
    while True:
        report = sweep(get_settings(), storage)
        click.echo(
            f"requeued {len(report.requeued)}, failed {len(report.failed)}, expired uploads {len(report.expired)},"
            f" dead-lettered {len(report.dead_lettered)}, orphans deleted {len(report.orphans)},"
            f" uploads aborted {len(report.aborted)}"
            + (" (AWS unreachable: the rest waits)" if report.unreachable else "")
        )
        if with_metrics:
            _publish_metrics()
        if mailboxes:
            _prune_mailboxes()
        if not every:
            return
        time.sleep(every)


@videos.command("retry")
@click.argument("video_ids", nargs=-1, required=True)
def videos_retry(video_ids: tuple[str, ...]) -> None:
    """Queue failed videos again."""
    with click.progressbar(video_ids, label="retrying") as bar:
        results = {}
        for video_id in bar:
            try:
                results[video_id] = (
                    "queued" if requeue(video_id, (Status.FAILED,), reset_attempts=True) else "not failed"
                )
            except EnqueueError:
                results[video_id] = "stored; SQS unreachable"
    for video_id, result in results.items():
        click.echo(f"{video_id}: {result}")


def init_app(app: Flask) -> None:
    """Register the commands."""
    app.cli.add_command(aws)
    app.cli.add_command(videos)
