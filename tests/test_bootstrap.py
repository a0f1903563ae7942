"""The instance bootstrap, run as EC2 would run it, in a scratch root against moto server.

``make release`` builds the release; ``deploy/bootstrap.sh`` (the launch templates' user data)
installs it into a virtualenv, writes the environment from the stack's configuration parameter
and secrets, and starts the units of ``deploy/systemd/`` (``BOOTSTRAP_DIRECT=1`` stands in for
systemd). Then a real upload through the installed web tier is processed by the installed worker.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from botocore.stub import Stubber
from flask import Flask
from sqlalchemy.engine import make_url

from deploy import agents, launched, release, stack, units
from domain.extensions import get_settings
from domain.storage import aws_client
from ops.aws import ensure_bucket, ensure_queues
from tests.conftest import PASSWORD, ROOT, free_port, unique_email, wait_for
from tests.test_e2e import row

pytestmark = pytest.mark.e2e
PREFIX = "bootstrap-"
# The instances' Python: Debian 12's own python3.11 package (3.11.2), not the newer build that runs the tests.
INSTANCE_PYTHON = "/usr/bin/python3.11"


def instance_python() -> str:
    """Return Debian's own python3.11 (``make test`` installs it); CI may not fall back to the tests' Python."""
    if Path(INSTANCE_PYTHON).exists():
        return INSTANCE_PYTHON
    if os.environ.get("CI"):
        raise RuntimeError(f"CI bootstraps with the instances' Python, {INSTANCE_PYTHON} (python3.11-venv)")
    return sys.executable


def test_render_puts_the_bootstrap_into_every_launch_template() -> None:
    rendered = stack.parse(stack.render())
    templates = {k: r for k, r in rendered["Resources"].items() if r["Type"] == "AWS::EC2::LaunchTemplate"}
    assert set(templates) == {"WebLaunchTemplate", "WorkerLaunchTemplate", "OpsLaunchTemplate"}
    for name, resource in templates.items():
        header, variables = resource["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"]["Fn::Sub"]
        assert variables["Bootstrap"] == (ROOT / "deploy" / "bootstrap.sh").read_text(), name
        assert header.splitlines()[-1] == "${Bootstrap}"
        role = name.removesuffix("LaunchTemplate").lower()
        assert f"VIDEOPROC_ROLE={role} " in header
        assert "Secret" not in header and "Password" not in header, "secrets are read at boot, never in user data"


def test_units_relocate_and_parse(tmp_path: Path) -> None:
    written = units.install("web", tmp_path)
    assert [p.name for p in written if p.suffix != ".conf"] == list(units.ROLES["web"])
    drop_ins = {str(p.relative_to(tmp_path / "etc/systemd/system")) for p in written if p.suffix == ".conf"}
    assert drop_ins == {"videoproc-.service.d/hardening.conf", "videoproc-web.service.d/jail.conf"}
    web = units.parse(written[1].read_text(), written[1].name)
    assert web.command[0] == f"{tmp_path}/opt/videoproc/venv/bin/gunicorn"
    assert f"unix:{tmp_path}/run/videoproc/gunicorn.sock" in web.command
    assert web.environment_files == [tmp_path / "etc/videoproc/env"] and web.environment["WEB_WORKERS"] == "3"
    timer = [p for p in units.install("ops", tmp_path) if p.suffix != ".conf"]
    assert {p.name for p in timer} == {
        "videoproc-flower.service",
        "videoproc-sweeper.timer",
        "videoproc-sweeper.service",
    }
    assert units.parse(timer[1].read_text(), timer[1].name).every == 60


@pytest.fixture
def scratch_root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "root"
    root.mkdir()
    yield root
    units.stop_direct(root)


def instance_config(app: Flask, database_url: str, redis_url: str, ports: dict[str, int]) -> dict[str, str]:
    """What the stack's InstanceConfig parameter holds, with secrets made in moto's Secrets Manager."""
    manager = aws_client("secretsmanager", get_settings(app))

    def secret(name: str, value: str) -> str:
        return manager.create_secret(Name=f"{name}-{secrets.token_hex(4)}", SecretString=value)["ARN"]

    config = {
        "S3_BUCKET": app.config["S3_BUCKET"],
        "SQS_QUEUE_PREFIX": PREFIX,
        "SQS_QUEUE_NAME": "videos",
        "WEBHOOK_QUEUE_NAME": "videos-webhooks",
        "OPTIMIZE_QUEUE_NAME": "videos-optimize",
        "SQS_DLQ_NAME": "videos-dlq",
        "RATELIMIT_STORAGE_URI": redis_url,
        "TRUSTED_PROXIES": "2",
        "LOAD_BALANCER_NETWORK": "127.0.0.0/8",
        "SECRET_KEY_ARN": secret("secret-key", secrets.token_urlsafe(48)),
        "FLOWER_PASSWORD_ARN": secret("flower", "flower-password-for-ops"),
        "SQS_WAIT_TIME_SECONDS": "1",
        "WEB_PORT": str(ports["web"]),
        "FLOWER_PORT": str(ports["flower"]),
        "WORKER_CONCURRENCY": "1",
        "LOG_GROUP_PREFIX": f"/bootstrap-{secrets.token_hex(4)}/",
    }
    logs = aws_client("logs", get_settings(app))
    for role in ("web", "worker", "ops"):  # the stack's log groups
        logs.create_log_group(logGroupName=f"{config['LOG_GROUP_PREFIX']}{role}")
    url = make_url(database_url)
    if url.drivername.startswith("postgresql"):  # RDS's managed secret and endpoint, as the template gives them
        login = json.dumps({"username": url.username, "password": url.password or ""})
        config |= {"DATABASE_SECRET_ARN": secret("database", login), "DATABASE_HOST": url.host}
        config |= {"DATABASE_PORT": str(url.port or 5432), "DATABASE_NAME": url.database}
        config["DATABASE_SSLMODE"] = "prefer"  # this machine's server has no TLS; RDS's does (require)
    else:  # an existing database URL (no PostgreSQL on this machine)
        config["DATABASE_URL"] = database_url
    return config


def bootstrap(role: str, root: Path, env: dict[str, str]) -> str:
    """Run the user data script for ``role``; return its output."""
    result = subprocess.run(
        ["bash", str(ROOT / "deploy" / "bootstrap.sh")],
        env={**os.environ, **env, "VIDEOPROC_ROLE": role},
        cwd=root,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_bootstrapped_instances_process_a_real_upload(
    make_app: Callable[..., Flask],
    base_env: dict[str, str],
    database_url: str,
    redis_url: str,
    scratch_root: Path,
    tmp_path: Path,
    clip: Callable[[str], Path],
) -> None:
    app = make_app({"SQS_QUEUE_PREFIX": PREFIX, "SQS_QUEUE_NAME": "videos", "SQS_DLQ_NAME": "videos-dlq"})
    with app.app_context():
        ensure_bucket(get_settings(app))  # the stack's bucket and queues (production never creates them)
        ensure_queues(get_settings(app))
    s3 = aws_client("s3", get_settings(app))
    s3.create_bucket(Bucket="videoproc-releases")
    built = release.build(tmp_path / "dist")
    s3.upload_file(str(built), "videoproc-releases", f"releases/{built.name}")
    ports = {"web": free_port(), "flower": free_port()}
    config = instance_config(app, database_url, redis_url, ports)
    aws_client("ssm", get_settings(app)).put_parameter(
        Name="/bootstrap/instance-config", Value=json.dumps(config), Type="String"
    )
    env = {
        "AWS_REGION": "us-east-1",
        "RELEASE_BUCKET": "videoproc-releases",
        "RELEASE_KEY": f"releases/{built.name}",
        "RELEASE_SHA256": release.checksum(built),
        "INSTANCE_CONFIG": "/bootstrap/instance-config",
        "BOOTSTRAP_ROOT": str(scratch_root),
        "BOOTSTRAP_DIRECT": "1",
        "BOOTSTRAP_PYTHON": instance_python(),
        "AWS_ENDPOINT_URL": base_env["AWS_ENDPOINT_URL"],
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "PIP_INDEX_URL": "http://127.0.0.1:9/no-index",  # a boot needs no Python package index: none answers
    }
    for name in ("APP_ENV", "DATABASE_URL", "SECRET_KEY", "S3_BUCKET"):  # only what the bootstrap writes counts
        env[name] = ""

    tampered = subprocess.run(
        ["bash", str(ROOT / "deploy" / "bootstrap.sh")],
        env={**os.environ, **env, "VIDEOPROC_ROLE": "worker", "RELEASE_SHA256": "0" * 64},
        cwd=scratch_root,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert tampered.returncode != 0 and "its SHA-256 differs" in tampered.stderr
    assert list((scratch_root / "opt/videoproc/release").iterdir()) == [], "nothing of it unpacked"

    out = bootstrap("worker", scratch_root, env)
    assert "started videoproc-worker.service" in out
    assert "launched: http://127.0.0.1:9808/metrics answered" in out, "it ends once the worker answers"
    venv = scratch_root / "opt/videoproc/venv"
    installed = subprocess.run(
        [str(venv / "bin/python"), "-c", "import app, celery; print(app.__file__)"],
        capture_output=True,
        text=True,
        cwd=scratch_root,
    )
    assert installed.stdout.startswith(str(venv)), "the release is installed in the instance's virtualenv"
    version = [str(venv / "bin/python"), "-c", "import platform; print(platform.python_version())"]
    expected = subprocess.run([instance_python(), *version[1:]], capture_output=True, text=True).stdout
    ran = subprocess.run(version, capture_output=True, text=True).stdout
    print(f"\nbootstrapped with Python {ran.strip()} ({instance_python()})")
    assert ran == expected, "the instance's virtualenv runs the instance's Python"
    env_file = scratch_root / "etc/videoproc/env"
    assert env_file.stat().st_mode & 0o777 == 0o600
    written = units.read_environment_file(env_file)
    assert written["APP_ENV"] == "production" and "SECRET_KEY" not in written, "a worker never holds SECRET_KEY"
    assert "FLOWER_BASIC_AUTH" not in written and "DATABASE_ADMIN_SECRET_ARN" not in written
    if "DATABASE_SECRET_ARN" in config:  # its own user, logged in by IAM token (the local server trusts it)
        assert written["DATABASE_URL"].startswith("postgresql://videoproc_worker@")
        assert written["DATABASE_IAM_AUTH"] == "true"
    web = bootstrap("web", scratch_root, env)
    assert f"launched: http://127.0.0.1:{ports['web']}/readyz answered" in web
    if "DATABASE_SECRET_ARN" in config:  # the migration ran as the owner, then made each role's user
        assert "videoproc_worker may change videos" in web, web[-2000:]
    assert f"launched: http://127.0.0.1:{ports['flower']}/healthcheck answered" in bootstrap("ops", scratch_root, env)
    logs = scratch_root / "var/log/videoproc"
    worker_log = logs / "videoproc-worker.service.log"
    wait_for(lambda: "ready." in worker_log.read_text(errors="replace"), timeout=120)
    hooks_log = logs / "videoproc-hooks.service.log"  # the web instance's webhook deliveries
    wait_for(lambda: hooks_log.exists() and "ready." in hooks_log.read_text(errors="replace"), timeout=120)
    assert "videos-webhooks" in hooks_log.read_text(errors="replace"), "it reads the webhooks queue"
    optimize_log = logs / "videoproc-optimize.service.log"  # the worker instance's optimize stage
    wait_for(lambda: optimize_log.exists() and "ready." in optimize_log.read_text(errors="replace"), timeout=120)
    assert "videos-optimize" in optimize_log.read_text(errors="replace"), "it reads the optimize queue"

    api = f"http://127.0.0.1:{ports['web']}"
    try:
        wait_for(lambda: _status(f"{api}/readyz") == 200, timeout=120)
    except AssertionError:
        answer = requests.get(f"{api}/readyz", timeout=5)
        raise AssertionError(f"{answer.status_code} {answer.text[:500]}") from None
    email = unique_email()
    signup = {"email": email, "password": PASSWORD, "password_confirm": PASSWORD}
    assert requests.post(f"{api}/api/auth/signup", json=signup).status_code == 201
    login = requests.post(f"{api}/api/auth/login", json={"email": email, "password": PASSWORD}).json()
    headers = {"Authorization": f"Bearer {login['access_token']}"}
    with clip("small.mp4").open("rb") as f:
        answer = requests.post(
            f"{api}/api/videos/upload",
            headers=headers,
            files={"video_file": ("clip.mp4", f, "video/mp4")},
            data={"title": "t"},
        )
    assert answer.status_code == 202, answer.text
    video_id = answer.json()["video_id"]
    done = wait_for(lambda: (r := row(app, video_id)) and r.status in ("processed", "failed") and r, timeout=240)
    assert done.status == "processed", (done.error_code, worker_log.read_text()[-3000:])
    assert s3.head_object(Bucket=app.config["S3_BUCKET"], Key=done.processed_key)["ContentLength"] > 0
    assert video_id in worker_log.read_text(), "the installed worker did the job"
    assert written["LOG_GROUP"] == f"{config['LOG_GROUP_PREFIX']}worker"

    def shipped() -> list[str]:  # the worker's records reach its log group (where the error alarm reads them)
        found = aws_client("logs", get_settings(app)).filter_log_events(
            logGroupName=written["LOG_GROUP"], filterPattern=f'"{video_id}"'
        )
        return [e["message"] for e in found["events"] if "msg=processed" in e["message"]]

    assert wait_for(shipped, timeout=60)

    flower = f"http://127.0.0.1:{ports['flower']}"
    wait_for(lambda: _status(f"{flower}/healthcheck") == 200, timeout=60)
    assert _status(f"{flower}/workers") == 401, "Flower asks for the ops password"
    assert requests.get(f"{flower}/workers", auth=("ops", "flower-password-for-ops"), timeout=10).status_code == 200


def _status(url: str, **kwargs: Any) -> int:
    try:
        return requests.get(url, timeout=5, **kwargs).status_code
    except requests.RequestException:
        return 0


def test_the_launch_hook_is_completed_once_the_role_answers(tmp_path: Path) -> None:
    """moto completes no lifecycle action: the call is checked against botocore's own model instead."""
    autoscaling = boto3.client("autoscaling", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    stubber = Stubber(autoscaling)
    for result in ("CONTINUE", "ABANDON"):
        expected = {"LifecycleHookName": "bootstrapped", "AutoScalingGroupName": "vp-web", "InstanceId": "i-0abc"}
        stubber.add_response("complete_lifecycle_action", {}, {**expected, "LifecycleActionResult": result})
    with stubber:
        assert launched.complete(autoscaling, "vp-web", "bootstrapped", "i-0abc", ready=True) == "CONTINUE"
        assert launched.complete(autoscaling, "vp-web", "bootstrapped", "i-0abc", ready=False) == "ABANDON"
    stubber.assert_no_pending_responses()

    calls = iter([False, False, True])
    assert launched.wait(lambda: next(calls), timeout=60, poll=0)
    assert not launched.wait(lambda: False, timeout=0.05, poll=0.01)

    env_file = tmp_path / "etc/videoproc/env"
    env_file.parent.mkdir(parents=True)
    env_file.write_text('WEB_PORT="8123"\n')
    assert launched.probe_url("web", launched.role_environment("web", tmp_path)) == "http://127.0.0.1:8123/readyz"
    worker = launched.role_environment("worker", tmp_path)
    assert launched.probe_url("worker", worker) == "http://127.0.0.1:9808/metrics", "the unit's own port"


def test_the_cloudwatch_agent_ships_cloud_init_and_the_journal_into_the_roles_group() -> None:
    config = agents.config("/videoproc/worker")
    files = {f["file_path"]: f for f in config["logs"]["logs_collected"]["files"]["collect_list"]}
    assert set(files) == {"/var/log/cloud-init-output.log", "/var/log/videoproc/journal.log"}
    assert {f["log_group_name"] for f in files.values()} == {"/videoproc/worker"}
    assert files["/var/log/videoproc/journal.log"]["log_stream_name"] == "{instance_id}/journal"
    urls = agents.packages("eu-west-1", "arm64")
    assert urls["amazon-ssm-agent"].endswith("/amazon-ssm-eu-west-1/latest/debian_arm64/amazon-ssm-agent.deb")
    assert "/debian/arm64/latest/amazon-cloudwatch-agent.deb" in urls["amazon-cloudwatch-agent"]
    assert agents.installed("dpkg") and not agents.installed("videoproc-no-such-package"), "a baked agent is kept"
    journal = units.parse((units.UNIT_DIR / "videoproc-journal.service").read_text(), "videoproc-journal.service")
    assert "/var/log/videoproc/journal.log" in " ".join(journal.command)
    bootstrap_text = (ROOT / "deploy" / "bootstrap.sh").read_text()
    assert 'if [ -z "$ROOT" ] && [ -z "${AWS_ENDPOINT_URL:-}" ]; then' in bootstrap_text, "EC2 only"
