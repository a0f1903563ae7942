"""Operator commands: ``flask aws init``."""

from __future__ import annotations

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from app.aws import ensure_bucket, ensure_queue

aws = AppGroup("aws", help="Provision and inspect the AWS resources.")


@aws.command("init")
def aws_init() -> None:
    """Create the bucket and the queue if missing and reconcile their settings (idempotent)."""
    s = current_app.config
    ensure_bucket(s)
    click.echo(f"bucket  {s['S3_BUCKET']}: ready")
    click.echo(f"queue   {ensure_queue(s)}: ready")


def init_app(app: Flask) -> None:
    """Register the commands."""
    app.cli.add_command(aws)
