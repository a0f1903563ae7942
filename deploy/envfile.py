"""Write an instance's environment file from the stack's configuration and its secrets.

Usage: python -m deploy.envfile --parameter NAME --out /etc/videoproc/env

The stack keeps the names of its resources in one SSM parameter (``InstanceConfig``, JSON,
nothing secret in it). Secrets are named by ARN there and read from Secrets Manager at
boot, so no secret is ever in user data or in the template:

- ``SECRET_KEY_ARN``: the API's ``SECRET_KEY``, for web instances only (workers and ops
  never sign or read a token, so they may not read it);
- ``DATABASE_HOST``, ``DATABASE_PORT``, ``DATABASE_NAME`` (and ``DATABASE_SSLMODE``,
  ``require`` by default): ``DATABASE_URL`` for the role's own user, ``videoproc_<role>``,
  with no password: it logs in with an IAM token (``DATABASE_IAM_AUTH``, ``domain/database.py``).
  ``DATABASE_SECRET_ARN`` (RDS's managed master secret) is passed on to web instances only, as
  ``DATABASE_ADMIN_SECRET_ARN``, for the migration unit to read when it runs
  (``deploy/migrate.py``); no process keeps it, so its rotation breaks nothing. A
  ``DATABASE_URL`` in the parameter is used as it is (an existing database);
- ``FLOWER_PASSWORD_ARN``: Flower's basic auth as user ``ops`` (the ops role only: the
  others may not read it).

``LOG_GROUP_PREFIX`` becomes the role's own ``LOG_GROUP`` (``/<stack>/worker``).

Every other key is written as it is. AWS_REGION and, for local runs, AWS_ENDPOINT_URL
and the AWS credentials come from this process's environment.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import boto3

SECRET_KEYS = ("SECRET_KEY_ARN", "DATABASE_SECRET_ARN", "FLOWER_PASSWORD_ARN")
COMPOSED = ("LOG_GROUP_PREFIX",)
DATABASE_PARTS = ("DATABASE_HOST", "DATABASE_PORT", "DATABASE_NAME", "DATABASE_SSLMODE")
PASSED_THROUGH = ("AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def environment(
    config: Mapping[str, str], secret: Callable[[str], str], passed: Mapping[str, str], role: str, cores: int = 0
) -> dict[str, str]:
    """Return a ``role`` instance's environment: the configuration, its secrets resolved, ``APP_ENV=production``.

    A worker without ``WORKER_CONCURRENCY`` gets one pool process more than it has cores (``cores``, this
    host's by default): one job's download and upload overlap the others' encodes (bench.concurrency).
    """
    env = {"APP_ENV": "production", "VIDEOPROC_ROLE": role}
    if role == "worker":
        env["WORKER_CONCURRENCY"] = str((cores or os.cpu_count() or 1) + 1)
    env |= {k: passed[k] for k in PASSED_THROUGH if passed.get(k)}
    env |= {k: str(v) for k, v in config.items() if k not in SECRET_KEYS + DATABASE_PARTS + COMPOSED}
    if prefix := config.get("LOG_GROUP_PREFIX"):
        env["LOG_GROUP"] = f"{prefix}{role}"
    if (arn := config.get("SECRET_KEY_ARN")) and role == "web":
        env["SECRET_KEY"] = secret(arn)
    if (arn := config.get("DATABASE_SECRET_ARN")) and not config.get("DATABASE_URL"):
        host, port, name = (config[k] for k in DATABASE_PARTS[:3])
        sslmode = config.get("DATABASE_SSLMODE", "require")  # IAM authentication needs TLS
        env["DATABASE_URL"] = f"postgresql://videoproc_{role}@{host}:{port}/{name}?sslmode={sslmode}"
        env["DATABASE_IAM_AUTH"] = "true"
        if role == "web":
            env["DATABASE_ADMIN_SECRET_ARN"] = arn
    if (arn := config.get("FLOWER_PASSWORD_ARN")) and role == "ops":
        env["FLOWER_BASIC_AUTH"] = f"ops:{secret(arn)}"
    return env


def render(env: Mapping[str, str]) -> str:
    """Return ``env`` as a systemd ``EnvironmentFile`` (double-quoted values, also read by ``shlex``)."""
    lines = []
    for key, value in sorted(env.items()):
        if not key.isidentifier() or "\n" in value or "\r" in value:
            raise ValueError(f"cannot write {key!r} into an environment file")
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'{key}="{escaped}"')
    return "\n".join(lines) + "\n"


def write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (it holds secrets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def main(argv: list[str] | None = None) -> int:
    """Read the parameter and the secrets it names; write the environment file."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parameter", required=True, help="the stack's InstanceConfig SSM parameter")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--role", required=True, choices=("web", "worker", "ops"))
    args = parser.parse_args(argv)
    session = boto3.session.Session(region_name=os.environ.get("AWS_REGION"))
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or None
    ssm = session.client("ssm", endpoint_url=endpoint)
    secrets = session.client("secretsmanager", endpoint_url=endpoint)
    config = json.loads(ssm.get_parameter(Name=args.parameter)["Parameter"]["Value"])

    def secret(arn: str) -> str:
        return secrets.get_secret_value(SecretId=arn)["SecretString"]

    env = environment(config, secret, os.environ, args.role)
    write(args.out, render(env))
    print(f"wrote {len(env)} variables to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
