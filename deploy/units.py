"""Install an instance role's systemd units; start them with systemd, or directly for tests.

Usage: python -m deploy.units install ROLE [--root DIR] [--direct]
       python -m deploy.units stop --root DIR

The units are the files in ``deploy/systemd/``. With ``--root`` every path they name
(``/opt/videoproc``, ``/etc/videoproc``, ...) is moved under that scratch root. With
``--direct`` systemd is replaced by this module: each unit's ``ExecStart`` runs with its
``Environment``/``EnvironmentFile`` and working directory, oneshot units to completion, a
timer's service in a loop, the rest in the background with a pid file and a log under the
root (``stop`` ends them). The bootstrap test uses that to run what an instance runs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

UNIT_DIR = Path(__file__).resolve().parent / "systemd"
ROLES = {
    "web": ("videoproc-migrate.service", "videoproc-web.service", "videoproc-proxy.service", "videoproc-hooks.service"),
    "worker": ("videoproc-worker.service", "videoproc-optimize.service"),
    "ops": ("videoproc-flower.service", "videoproc-sweeper.timer"),
}
PATHS = ("/opt/videoproc", "/etc/videoproc", "/run/videoproc", "/var/lib/videoproc", "/var/log/videoproc")
VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


@dataclass
class Unit:
    """What this module needs of a unit file."""

    name: str
    command: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    environment_files: list[Path] = field(default_factory=list)
    directory: Path | None = None
    oneshot: bool = False
    every: float = 0  # a timer's OnUnitActiveSec


def relocate(text: str, root: Path | None) -> str:
    """Return a unit's text with its paths under ``root``."""
    for path in PATHS if root else ():
        text = text.replace(path, f"{root}{path}")
    return text


def parse(text: str, name: str) -> Unit:
    """Parse the keys of a unit file this module runs."""
    unit = Unit(name)
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep or line.lstrip().startswith(("#", ";")):
            continue
        if key == "ExecStart":
            unit.command = shlex.split(value)
        elif key == "Environment":
            unit.environment |= dict(item.split("=", 1) for item in shlex.split(value))
        elif key == "EnvironmentFile":
            unit.environment_files.append(Path(value.lstrip("-")))
        elif key == "WorkingDirectory":
            unit.directory = Path(value)
        elif key == "Type":
            unit.oneshot = value == "oneshot"
        elif key == "OnUnitActiveSec":
            unit.every = float(value)
    return unit


def expand(arg: str, env: dict[str, str]) -> str:
    """Replace ``${NAME}``, ``$NAME`` and ``%H`` (the host name) in an ``ExecStart`` argument, as systemd does."""
    return VARIABLE.sub(lambda m: env.get(m[1] or m[2], ""), arg).replace("%H", socket.gethostname())


def read_environment_file(path: Path) -> dict[str, str]:
    """Read ``KEY="value"`` lines (what ``deploy/envfile.py`` writes)."""
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = " ".join(shlex.split(value))
    return env


def install(role: str, root: Path | None) -> list[Path]:
    """Write the role's units (the services its timers start, and their drop-ins) into ``<root>/etc/systemd/system``.

    The drop-ins: ``videoproc-.service.d/hardening.conf``, every unit's sandbox, and a unit's own
    ``<unit>.d/`` where it needs more (the jail's namespaces for the web and the worker).
    """
    target = Path(f"{root or ''}/etc/systemd/system")
    target.mkdir(parents=True, exist_ok=True)
    names = list(ROLES[role]) + [n.replace(".timer", ".service") for n in ROLES[role] if n.endswith(".timer")]
    files = [Path(name) for name in names]
    for folder in ["videoproc-.service.d", *(f"{name}.d" for name in names)]:
        files += [path.relative_to(UNIT_DIR) for path in sorted((UNIT_DIR / folder).glob("*.conf"))]
    written = []
    for name in files:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_text(relocate((UNIT_DIR / name).read_text(), root))
        written.append(target / name)
    return written


def enable(role: str) -> None:
    """Enable and start the role's units with systemd."""
    subprocess.run(["systemctl", "daemon-reload"], check=True)
    subprocess.run(["systemctl", "enable", "--now", *ROLES[role]], check=True)


def start_direct(role: str, root: Path) -> dict[str, int]:
    """Start the role's units without systemd; return the pid of each background process."""
    units = root / "etc" / "systemd" / "system"
    run, logs = root / "run" / "videoproc", root / "var" / "log" / "videoproc"
    run.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    (root / "var" / "lib" / "videoproc").mkdir(parents=True, exist_ok=True)
    started = {}
    for name in ROLES[role]:
        unit = parse((units / name).read_text(), name)
        service = unit
        if name.endswith(".timer"):
            service_name = name.replace(".timer", ".service")
            service = parse((units / service_name).read_text(), service_name)
        env = dict(os.environ) | service.environment
        for path in service.environment_files:
            env |= read_environment_file(path)
        command = [expand(arg, env) for arg in service.command]
        if unit.every:  # a timer: the oneshot service in a loop
            command = ["sh", "-c", f'while :; do "$@"; sleep {unit.every:g}; done', "timer", *command]
        elif service.oneshot:
            subprocess.run(command, env=env, cwd=service.directory, check=True)
            continue
        with open(logs / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                command, env=env, cwd=service.directory, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        (run / f"{name}.pid").write_text(str(process.pid))
        started[name] = process.pid
    return started


def stop_direct(root: Path, timeout: float = 60) -> None:
    """Stop what ``start_direct`` started (SIGTERM to each process group, SIGKILL after ``timeout``)."""
    pids = []
    for pid_file in (root / "run" / "videoproc").glob("*.pid"):
        pid = int(pid_file.read_text())
        pid_file.unlink()
        try:
            os.killpg(pid, signal.SIGTERM)
            pids.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    """Install a role's units and start them; or stop directly started ones."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    install_cmd = sub.add_parser("install")
    install_cmd.add_argument("role", choices=sorted(ROLES))
    install_cmd.add_argument("--root", type=Path)
    install_cmd.add_argument("--direct", action="store_true", help="start the commands without systemd")
    stop_cmd = sub.add_parser("stop")
    stop_cmd.add_argument("--root", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "stop":
        stop_direct(args.root.resolve())
        return 0
    root = args.root.resolve() if args.root else None
    for path in install(args.role, root):
        print(f"installed {path}")
    if args.direct:
        for name, pid in start_direct(args.role, root or Path("/")).items():
            print(f"started {name} pid={pid}")
    else:
        enable(args.role)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
