"""``make instance-test``: boot a worker on a clean Debian 12 root, as user data would, and time its first job.

Usage: python -m deploy.instance_test [--kind image|bare|systemd|all] [--keep DIR]   (make instance-test: all)

1. **The root.** ``mmdebstrap`` (Debian's) builds a Debian 12 root from Debian's package
   archive, cached under ``build/instance/``: ``bare`` holds what a stock Debian 12 image has
   that the bootstrap uses (``python3.11``, systemd, CA certificates), so the bootstrap
   installs FFmpeg, venv and boto3 itself with apt-get, as on a stock AMI; ``image`` is that
   root after the template's image component (what EC2 Image Builder bakes) ran its build and
   test commands in it, all but the CloudWatch agent's, whose package only AWS's network serves.
2. **Its AWS.** A moto server on the host holds the stack's pieces: the bucket and queues, the
   release (``make release``) and its SHA-256, the instance configuration parameter. The
   database is this machine's PostgreSQL (SQLite in the root's ``/srv`` when none answers).
3. **One upload waiting.** A real clip is uploaded through the API (in this process) before
   the instance boots, so its job waits in the queue.
4. **The boot.** ``deploy/bootstrap.sh`` runs inside the root under ``bubblewrap`` (its own
   mount namespace; the host's network, so it reaches moto and the package archives), as
   root, with the header user data gives a worker and Debian's own ``python3.11``; systemd
   is replaced by ``deploy/units.py --direct``, as in the bootstrap test. No Python package
   index answers (``PIP_INDEX_URL`` points nowhere): the release's own wheels are all it gets.
5. **Under systemd** (``--kind systemd``): the ``image`` root boots with systemd as its init in
   ``systemd-nspawn`` (Debian's systemd-container), and a oneshot unit runs the bootstrap as
   cloud-init runs user data, so ``systemctl`` enables the worker's real unit with its
   drop-ins (``hardening.conf``, ``jail.conf``): the upload is processed under them, FFmpeg in
   its jail inside the unit's sandbox.
6. **The first job.** It waits until the worker in the root has processed the upload, prints
   the Python version the instance ran, the boot time (until the bootstrap's launch hook
   step saw the worker answer) and boot-to-first-job, and ends with the processed video's id.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3

from deploy import release
from deploy.rehearsal import free_port, make_clip

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "build" / "instance"
SUITE = "bookworm"  # Debian 12, the AMI's release
BASE = ("python3.11", "systemd", "ca-certificates")  # of a stock Debian 12 AMI, what the bootstrap uses
# The image component's steps that can't run here, and why.
SKIPPED_STEPS = {
    "CloudWatchAgentDownload": "its package comes from AWS's bucket, which only AWS's network reaches",
    "CloudWatchAgent": "installs that package",
}
PREFIX = "instance-test-"
POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


def image_script(region: str = "us-east-1") -> str:
    """Return the template's image component as one bash script: its build then test steps, as Image Builder runs them.

    Every step but those in ``SKIPPED_STEPS`` must be ``ExecuteBash``; each runs in its own shell.
    """
    import yaml

    from deploy import stack

    component = stack.parse(stack.render())["Resources"]["ImageComponent"]["Properties"]["Data"]["Fn::Sub"]
    document = yaml.safe_load(component.replace("${AWS::Region}", region))
    script = []
    for phase in document["phases"]:
        for step in phase["steps"]:
            if step["name"] in SKIPPED_STEPS:
                continue
            if step["action"] != "ExecuteBash":
                raise ValueError(f"instance-test can't run step {step['name']} ({step['action']})")
            body = "\n".join(step["inputs"]["commands"])
            script.append(f"echo 'image component: {phase['name']}/{step['name']}'\nbash -c {shlex.quote(body)}")
    return "set -e\n" + "\n".join(script) + "\n"


def root_tarball(kind: str) -> Path:
    """Return a Debian 12 root of ``kind`` as a tarball, built by mmdebstrap when not cached.

    The ``image`` root's name carries the component script's digest: a changed component builds a new one.
    """
    CACHE.mkdir(parents=True, exist_ok=True)
    script = image_script() if kind == "image" else ""
    digest = hashlib.sha256(f"{BASE}{script}".encode()).hexdigest()[:12]
    tarball = CACHE / f"debian12-{kind}-{digest}.tar"
    if not tarball.exists():
        if not shutil.which("mmdebstrap"):
            raise SystemExit(
                "make instance-test needs Debian's mmdebstrap and bubblewrap: apt-get install mmdebstrap bubblewrap"
            )
        print(f"building the {kind} root with mmdebstrap ({', '.join(BASE)})", flush=True)
        partial = tarball.with_suffix(".partial")
        argv = ["mmdebstrap", "--variant=minbase", "--format=tar", f"--include={','.join(BASE)}"]
        if script:  # the image component, run in the new root as Image Builder runs it on the build instance
            hook = CACHE / f"image-{digest}.sh"
            hook.write_text(script)
            argv += [f"--customize-hook=copy-in {hook} /tmp", f'--customize-hook=chroot "$1" bash /tmp/{hook.name}']
            argv += [f'--customize-hook=rm "$1/tmp/{hook.name}"']
        subprocess.run([*argv, SUITE, str(partial)], check=True)
        partial.rename(tarball)
    return tarball


def database(scratch: Path) -> str:
    """Return a fresh database URL: a new PostgreSQL database when one answers, else SQLite under ``scratch``."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    admin = create_engine(os.environ.get("INSTANCE_TEST_POSTGRES", POSTGRES), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            name = f"videoproc_instance_{os.getpid()}"
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        return admin.url.set(database=name).render_as_string(hide_password=False)
    except OperationalError:
        return f"sqlite:///{scratch / 'videoproc.db'}"
    finally:
        admin.dispose()


def jail(root: Path, argv: list[str], env: dict[str, str]) -> list[str]:
    """Return the bubblewrap command that runs ``argv`` inside ``root`` as its root user, on the host's network.

    The root's ``/srv`` is also seen at its host path, so a SQLite database there has one name on both sides.
    """
    srv = str(root / "srv")
    command = [
        "bwrap",
        "--bind",
        str(root),
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--perms",
        "1777",
        "--tmpfs",
        "/tmp",
    ]
    command += ["--bind", srv, srv]
    command += ["--ro-bind", "/etc/resolv.conf", "/etc/resolv.conf", "--share-net", "--clearenv"]
    # This host's CA bundle: the network it is on may sign TLS with a CA of its own (pip's index).
    command += ["--ro-bind", "/etc/ssl/certs/ca-certificates.crt", "/etc/ssl/certs/ca-certificates.crt"]
    for key, value in env.items():
        command += ["--setenv", key, value]
    return command + argv


def boot(kind: str, keep: Path | None = None, systemd: bool = False) -> dict[str, Any]:
    """Boot a worker on a ``kind`` root and process one upload; return what was measured.

    ``systemd``: the root boots with systemd as its init (``systemd-nspawn --boot``) and runs the
    bootstrap as its user data unit, so the worker runs under its real unit and drop-ins.
    """
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    scratch = Path(keep or tempfile.mkdtemp(prefix="videoproc-instance-"))
    root = scratch / "root"
    try:
        with tarfile.open(root_tarball(kind)) as tar:
            root.mkdir(parents=True)
            tar.extractall(root, filter="fully_trusted")  # our own mmdebstrap output: devices, links, owners
        (root / "srv").mkdir(exist_ok=True)
        url = database(root / "srv")
        worker_port = free_port()
        app, api, env = _stack(endpoint, url, worker_port)
        video_id = _upload(api)
        started = time.monotonic()
        if systemd:
            container = _boot_systemd(root, env, scratch / "console.log")
            try:
                processed = _wait_processed(app, video_id, started, root, console=scratch / "console.log")
                booted, out = processed, (scratch / "console.log").read_text(errors="replace")
                units = subprocess.run(
                    ["systemctl", f"--root={root}", "is-enabled", "videoproc-worker.service"],
                    capture_output=True,
                    text=True,
                ).stdout.strip()
                if units != "enabled":
                    raise SystemExit(f"instance-test: the worker's unit is {units!r} in the booted root, not enabled")
                exposure = _exposure(root, "videoproc-worker.service")
                if exposure > 3.0:
                    raise SystemExit(f"instance-test: the installed worker unit's exposure is {exposure}, over 3.0")
                print(f"the worker ran under its unit as installed: exposure {exposure}", flush=True)
            finally:
                _halt(container)
        else:
            booted, out = _bootstrap(root, env)
            processed = _wait_processed(app, video_id, started, root)
        version = "import platform; print(platform.python_version())"
        python = subprocess.run(
            ["chroot", str(root), "/opt/videoproc/venv/bin/python", "-c", version], capture_output=True, text=True
        ).stdout.strip()
        return {
            "kind": f"{kind} under systemd" if systemd else kind,
            "python": python,
            "boot_seconds": booted,
            "boot_to_first_job_seconds": processed,
            "video_id": video_id,
            "bootstrap_tail": out[-600:],
        }
    finally:
        _stop(root)
        server.stop()
        if keep is None:
            shutil.rmtree(scratch, ignore_errors=True)


def _stack(endpoint: str, database_url: str, worker_port: int) -> tuple[Any, Any, dict[str, str]]:
    """Put the stack's pieces into moto; return the host's app, an API client on it, and the user data header."""
    import flask_migrate

    from app import create_app
    from config import load_settings
    from domain.extensions import get_settings
    from ops.aws import ensure_bucket, ensure_queues

    credentials = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    names = {"S3_BUCKET": "instance-test-videos", "SQS_QUEUE_PREFIX": PREFIX, "SQS_QUEUE_NAME": "videos"}
    names |= {"SQS_DLQ_NAME": "videos-dlq"}
    host = {"APP_ENV": "testing", "DATABASE_URL": database_url, "AWS_ENDPOINT_URL": endpoint, **credentials, **names}
    host |= {"SECRET_KEY": "instance-test-secret-key-of-32-bytes-or-more", "RATELIMIT_ENABLED": "false"}
    app = create_app(load_settings(host))
    with app.app_context():
        flask_migrate.upgrade(directory=str(ROOT / "migrations"))
        ensure_bucket(get_settings(app))
        ensure_queues(get_settings(app))
    aws = {"endpoint_url": endpoint, "region_name": "us-east-1", "aws_access_key_id": "testing"}
    aws["aws_secret_access_key"] = "testing"
    s3 = boto3.client("s3", **aws)
    s3.create_bucket(Bucket="instance-test-releases")
    built = release.build(ROOT / "dist")
    s3.upload_file(str(built), "instance-test-releases", f"releases/{built.name}")
    config = {
        **names,
        "DATABASE_URL": database_url,
        "RATELIMIT_STORAGE_URI": "memory://",
        "TRUSTED_PROXIES": "2",
        "SQS_WAIT_TIME_SECONDS": "1",
        "WORKER_CONCURRENCY": "1",
        "WORKER_METRICS_PORT": str(worker_port),
    }
    boto3.client("ssm", **aws).put_parameter(
        Name="/instance-test/instance-config", Value=json.dumps(config), Type="String", Overwrite=True
    )
    header = {
        "VIDEOPROC_ROLE": "worker",
        "AWS_REGION": "us-east-1",
        "RELEASE_BUCKET": "instance-test-releases",
        "RELEASE_KEY": f"releases/{built.name}",
        "RELEASE_SHA256": release.checksum(built),
        "INSTANCE_CONFIG": "/instance-test/instance-config",
        "AWS_ENDPOINT_URL": endpoint,  # the only line user data does not have: AWS is moto on the host
        **credentials,
        "BOOTSTRAP_DIRECT": "1",  # systemd replaced by deploy/units.py --direct
        "BOOTSTRAP_PYTHON": "python3.11",  # Debian's own
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "PIP_INDEX_URL": "http://127.0.0.1:9/no-index",  # a boot needs no Python package index: none answers
    }
    return app, app.test_client(), header


def _upload(api: Any) -> str:
    """Sign up, log in and upload a real 3 s clip; return its video id (its job now waits in the queue)."""
    password = "instance-test-password-1"
    email = f"instance-{os.getpid()}@example.com"
    api.post("/api/auth/signup", json={"email": email, "password": password, "password_confirm": password})
    token = api.post("/api/auth/login", json={"email": email, "password": password}).json["access_token"]
    with tempfile.TemporaryDirectory() as folder:
        clip = make_clip(Path(folder) / "clip.mp4")
        with clip.open("rb") as f:
            answer = api.post(
                "/api/videos/upload",
                headers={"Authorization": f"Bearer {token}"},
                data={"title": "instance test", "video_file": (f, "clip.mp4", "video/mp4")},
                content_type="multipart/form-data",
            )
    if answer.status_code != 202:
        raise SystemExit(f"instance-test: the upload answered {answer.status_code} {answer.get_data(as_text=True)}")
    return str(answer.json["video_id"])


def _bootstrap(root: Path, env: dict[str, str]) -> tuple[float, str]:
    """Run the bootstrap inside ``root``; return its seconds and its output."""
    shutil.copy(ROOT / "deploy" / "bootstrap.sh", root / "bootstrap.sh")
    started = time.monotonic()
    run = subprocess.run(jail(root, ["/bin/bash", "/bootstrap.sh"], env), capture_output=True, text=True, timeout=1800)
    seconds = time.monotonic() - started
    if run.returncode:
        raise SystemExit(
            f"instance-test: the bootstrap failed ({run.returncode}):\n{run.stdout[-3000:]}{run.stderr[-3000:]}"
        )
    return seconds, run.stdout


def _boot_systemd(root: Path, env: dict[str, str], console: Path) -> subprocess.Popen[bytes]:
    """Boot ``root`` with systemd in ``systemd-nspawn``; its user data unit runs the bootstrap with ``env``.

    The host's network (moto and PostgreSQL are on its loopback); the console goes to ``console``.
    """
    if not shutil.which("systemd-nspawn"):
        raise SystemExit("make instance-test --kind systemd needs Debian's systemd-container (systemd-nspawn)")
    shutil.copy(ROOT / "deploy" / "bootstrap.sh", root / "bootstrap.sh")
    header = {k: v for k, v in env.items() if k != "BOOTSTRAP_DIRECT"}  # systemd runs the units
    (root / "etc/videoproc-userdata.env").write_text("".join(f'{k}="{v}"\n' for k, v in header.items()))
    unit = root / "etc/systemd/system/videoproc-userdata.service"
    unit.write_text(
        "[Unit]\nDescription=the instance's user data (cloud-init's part)\nAfter=network.target\n"
        "[Service]\nType=oneshot\nEnvironmentFile=/etc/videoproc-userdata.env\n"
        "ExecStart=/bin/bash /bootstrap.sh\nStandardOutput=journal+console\nStandardError=journal+console\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / unit.name).symlink_to(f"/etc/systemd/system/{unit.name}")
    srv = root / "srv"
    argv = ["systemd-nspawn", f"--directory={root}", "--boot", "--register=no", "--keep-unit"]
    argv += ["--console=read-only", f"--bind={srv}:{srv}"]
    with console.open("wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _exposure(root: Path, unit: str) -> float:
    """Return ``systemd-analyze security``'s exposure of ``unit`` as installed in ``root`` (its drop-ins included)."""
    analyzed = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", f"--root={root}", "--no-pager", unit],
        capture_output=True,
        text=True,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", analyzed.stdout)
    if not found:
        raise SystemExit(f"instance-test: systemd-analyze said nothing of {unit}: {analyzed.stderr[-500:]}")
    return float(found[1])


def _halt(container: subprocess.Popen[bytes]) -> None:
    """Halt the container (SIGTERM: systemd-nspawn asks its init to power off), or kill it after a minute."""
    container.terminate()
    try:
        container.wait(timeout=60)
    except subprocess.TimeoutExpired:
        container.kill()
        container.wait()


def _wait_processed(
    app: Any, video_id: str, started: float, root: Path, timeout: float = 300, console: Path | None = None
) -> float:
    """Wait until the video is processed; return the seconds since ``started`` (the boot's start)."""
    from domain.extensions import db
    from domain.models import Video

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with app.app_context():
            video = db.session.get(Video, video_id)
            status = video.status if video else None
            db.session.remove()
        if status == "processed":
            return time.monotonic() - started
        if status == "failed":
            break
        time.sleep(0.5)
    log = console or root / "var/log/videoproc/videoproc-worker.service.log"
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no worker log)"
    raise SystemExit(f"instance-test: video {video_id} is {status}, not processed:\n{tail}")


def _stop(root: Path) -> None:
    """Stop what the bootstrap started (its pid files are under the root's /run/videoproc)."""
    for pid_file in (root / "run" / "videoproc").glob("*.pid"):
        with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
            os.killpg(int(pid_file.read_text()), signal.SIGTERM)
    time.sleep(2)


def main(argv: list[str] | None = None) -> int:
    """Boot a worker on the chosen roots; print what each measured."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=("image", "bare", "systemd", "all"), default="image")
    parser.add_argument("--keep", type=Path, help="keep the root and its logs in this folder")
    args = parser.parse_args(argv)
    if os.geteuid() != 0 or not shutil.which("bwrap"):
        raise SystemExit("make instance-test runs as root with Debian's bubblewrap and mmdebstrap installed")
    kinds = ("image", "bare", "systemd") if args.kind == "all" else (args.kind,)
    results = [boot("image" if kind == "systemd" else kind, args.keep, kind == "systemd") for kind in kinds]
    for result in results:
        print(
            f"{result['kind']} root: Debian's Python {result['python']}; bootstrap {result['boot_seconds']:.0f}s; "
            f"boot to first job {result['boot_to_first_job_seconds']:.0f}s",
            flush=True,
        )
    print(f"processed video {results[-1]['video_id']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
