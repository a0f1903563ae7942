"""Tell the group this instance is ready: complete its launch lifecycle hook (the bootstrap's last step).

Usage: python -m deploy.launched --role ROLE [--root DIR] [--timeout SECONDS]

Every group of the stack holds a new instance in ``Pending:Wait`` (hook ``bootstrapped``,
``LAUNCH_HOOK``, on group ``LAUNCH_GROUP``) until this completes the hook with ``CONTINUE``; only
then is it InService, counted in the backlog's divisor and registered with the load balancer.
It waits until the role answers on this host first (web: ``/readyz`` through nginx, so the
database, S3 and SQS answer too; worker: its metrics port; ops: Flower's ``/healthcheck``).
When the role never answers it completes with ``ABANDON`` and the group replaces the instance
at once; a bootstrap that dies before this runs is abandoned by the hook's timeout (900 s).
Without ``LAUNCH_GROUP`` (a local run) it only waits for the role.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from deploy import units
from deploy.wait_for import answers

# role -> (the variable holding its port, the port the units default to, the path that answers when it is up)
PROBES = {
    "web": ("WEB_PORT", "8000", "/readyz"),
    "worker": ("WORKER_METRICS_PORT", "9808", "/metrics"),
    "ops": ("FLOWER_PORT", "5555", "/healthcheck"),
}


def probe_url(role: str, env: Mapping[str, str]) -> str:
    """Return the URL that answers 2xx once ``role`` is up on this host."""
    variable, default, path = PROBES[role]
    return f"http://127.0.0.1:{env.get(variable) or default}{path}"


def wait(up: Callable[[], bool], timeout: float, poll: float = 1.0) -> bool:
    """Return True as soon as ``up()`` does, False when ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while not up():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)
    return True


def complete(autoscaling: Any, group: str, hook: str, instance_id: str, ready: bool) -> str:
    """Complete this instance's launch hook: CONTINUE when ready, else ABANDON; return the result."""
    result = "CONTINUE" if ready else "ABANDON"
    autoscaling.complete_lifecycle_action(
        LifecycleHookName=hook, AutoScalingGroupName=group, InstanceId=instance_id, LifecycleActionResult=result
    )
    return result


def role_environment(role: str, root: Path | None) -> dict[str, str]:
    """Return the environment the role's main unit runs with: its ``Environment=``, then the env file.

    The role's units in reverse, so that the first (its main unit: the worker's, not the optimize
    worker's metrics port) has the last word.
    """
    env: dict[str, str] = {}
    for name in reversed(units.ROLES[role]):
        unit = units.parse(units.relocate((units.UNIT_DIR / name).read_text(), root), name)
        env |= unit.environment
        for path in unit.environment_files:
            if path.exists():
                env |= units.read_environment_file(path)
    return env


def main(argv: list[str] | None = None) -> int:
    """Wait for the role, then complete the launch hook when there is one."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", required=True, choices=sorted(PROBES))
    parser.add_argument("--root", type=Path, help="a scratch root (tests)")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--abandon", action="store_true", help="the bootstrap failed: abandon without waiting")
    args = parser.parse_args(argv)
    ready = False
    if not args.abandon:
        url = probe_url(args.role, role_environment(args.role, args.root))
        started = time.monotonic()
        ready = wait(lambda: answers(url, ok_only=True), args.timeout)
        print(f"launched: {url} {'answered' if ready else 'did not answer'} after {time.monotonic() - started:.0f}s")
    group, hook = os.environ.get("LAUNCH_GROUP"), os.environ.get("LAUNCH_HOOK")
    if group and hook:
        import boto3

        from tasks.instance import Metadata  # the worker's IMDSv2 client

        metadata = Metadata(os.environ.get("EC2_METADATA_URL", "http://169.254.169.254"))
        instance_id = (metadata.get("instance-id") or "").strip()
        result = complete(boto3.client("autoscaling"), group, hook, instance_id, ready)
        print(f"launched: lifecycle hook {hook} of {group} completed with {result} for {instance_id}")
    return 0 if ready else 1


if __name__ == "__main__":
    sys.exit(main())
