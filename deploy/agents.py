"""The operators' agents on an instance: AWS's SSM agent and CloudWatch agent (the bootstrap's step 6).

Usage: python -m deploy.agents --env-file /etc/videoproc/env   (as root, on EC2)

Debian's AMIs carry neither agent. The bootstrap installs both from AWS's own packages in the
instance's region (``packages``), then starts the CloudWatch agent with ``config``: it ships
what no process of ours ships itself, into the role's log group, one stream per instance and
file: cloud-init's output (the bootstrap's own lines) and the journal, which
``videoproc-journal.service`` writes to ``/var/log/videoproc/journal.log`` (the agent reads
files, not journald): every unit's stderr, nginx's errors, the kernel's (the OOM killer).
The processes' own records already reach the same group (``LOG_GROUP``, ops/logs.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

CONFIG = Path("/opt/aws/amazon-cloudwatch-agent/etc/amazon-cloudwatch-agent.json")
FILES = {"/var/log/cloud-init-output.log": "cloud-init", "/var/log/videoproc/journal.log": "journal"}


def packages(region: str, architecture: str) -> dict[str, str]:
    """Return the URL of each agent's Debian package in ``region`` for ``architecture`` (amd64, arm64)."""
    return {
        "amazon-ssm-agent": f"https://s3.{region}.amazonaws.com/amazon-ssm-{region}/latest/debian_{architecture}/amazon-ssm-agent.deb",
        "amazon-cloudwatch-agent": (
            f"https://amazoncloudwatch-agent-{region}.s3.{region}.amazonaws.com/debian/{architecture}/latest/"
            "amazon-cloudwatch-agent.deb"
        ),
    }


def config(log_group: str) -> dict[str, Any]:
    """Return the CloudWatch agent's configuration: each file into the role's group, a stream per instance."""
    collect = [
        {
            "file_path": path,
            "log_group_name": log_group,
            "log_stream_name": f"{{instance_id}}/{name}",
            "timezone": "UTC",
        }
        for path, name in FILES.items()
    ]
    return {"agent": {"run_as_user": "root"}, "logs": {"logs_collected": {"files": {"collect_list": collect}}}}


def installed(package: str) -> bool:
    """Return whether dpkg has ``package`` installed (a baked image has both agents)."""
    status = subprocess.run(["dpkg-query", "--show", "--showformat=${Status}", package], capture_output=True, text=True)
    return status.returncode == 0 and status.stdout.endswith(" installed")


def install(env: dict[str, str]) -> None:
    """Install the agents the image lacks, configure the CloudWatch agent for the role's log group, start them."""
    architecture = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout
    with tempfile.TemporaryDirectory() as folder:
        for name, url in packages(env["AWS_REGION"], architecture.strip()).items():
            if installed(name):
                continue
            package = Path(folder) / f"{name}.deb"
            urllib.request.urlretrieve(url, package)  # AWS's own bucket, over HTTPS
            subprocess.run(["dpkg", "--install", str(package)], check=True)
    CONFIG.parent.mkdir(parents=True, exist_ok=True)
    CONFIG.write_text(json.dumps(config(env["LOG_GROUP"]), indent=2))
    journal = Path(__file__).resolve().parent / "systemd" / "videoproc-journal.service"
    shutil.copy(journal, "/etc/systemd/system/videoproc-journal.service")
    subprocess.run(["systemctl", "daemon-reload"], check=True)
    subprocess.run(["systemctl", "enable", "--now", "videoproc-journal.service", "amazon-ssm-agent"], check=True)
    ctl = "/opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl"
    subprocess.run([ctl, "-a", "fetch-config", "-m", "ec2", "-s", "-c", f"file:{CONFIG}"], check=True)


def main(argv: list[str] | None = None) -> int:
    """Install and start the agents for the role whose environment file is given."""
    from deploy.units import read_environment_file

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-file", type=Path, required=True)
    args = parser.parse_args(argv)
    env = {"AWS_REGION": os.environ.get("AWS_REGION", "")} | read_environment_file(args.env_file)
    if not env.get("LOG_GROUP") or not env.get("AWS_REGION"):
        raise SystemExit("deploy.agents: the environment names no LOG_GROUP or AWS_REGION")
    install(env)
    print(f"agents: SSM and CloudWatch agents running; files shipped to {env['LOG_GROUP']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
