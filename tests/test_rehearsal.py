"""make deploy-local: the stack deployed into moto server, then each role run under moto's IAM enforcement."""

from __future__ import annotations

import subprocess
import sys

import pytest

from deploy import rehearsal
from tests.conftest import ROOT


def test_statements_as_moto_can_enforce_them() -> None:
    s3 = {
        "Sid": "Videos",
        "Effect": "Allow",
        "Action": ["s3:GetObject", "s3:ListBucket"],
        "Resource": "arn:aws:s3:::b/*",
    }
    assert rehearsal.enforceable(s3) == {
        "Effect": "Allow",
        "Action": ["s3:GetObject", "s3:ListBucket", "s3:HeadBucket"],  # moto's name for what ListBucket allows
        "Resource": "arn:aws:s3:::b/*",  # moto checks S3's resources: kept
    }
    metric = {
        "Effect": "Allow",
        "Action": "cloudwatch:PutMetricData",
        "Resource": "*",
        "Condition": {"StringEquals": {"cloudwatch:namespace": "videoproc"}},
    }
    assert rehearsal.enforceable(metric) == {
        "Effect": "Allow",
        "Action": ["cloudwatch:PutMetricData", "monitoring:PutMetricData"],
        "Resource": "*",
    }, "moto evaluates no condition and names CloudWatch by its endpoint"
    queue = {"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": "arn:aws:sqs:us-east-1:1:q"}
    assert rehearsal.enforceable(queue)["Resource"] == "*", "moto asks about '*' for every service but S3"
    assert "17" in rehearsal.engine_majors()


@pytest.mark.e2e
def test_deploy_local_processes_an_upload_under_iam_enforcement() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "deploy.stack", "deploy-local", "--stack", "rehearsal"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = run.stdout
    assert run.returncode == 0, out[-3000:] + run.stderr[-3000:]
    assert "rehearsal: the worker's key may not read SECRET_KEY (AccessDenied)" in out, "enforcement was on"
    assert "no process called CreateTopic" in out and "admits Debian 12's Python 3.11.2" in out
    assert "RDS offers PostgreSQL 17" in out
    assert "under IAM enforcement (2 processed object(s)" in out, out[-2000:]
