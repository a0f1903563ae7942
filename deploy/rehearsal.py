"""The rehearsal of ``make deploy-local``: the deployed stack run by each role under moto's IAM enforcement.

After the stack is in moto server, ``rehearse``:

1. gives each role (web, worker, ops) an IAM user carrying only that role's policies (its
   inline policy and the shared boot policy, read back from the deployed stack's roles), with
   its own access key: the credentials an instance of the role would get;
2. writes each role's environment with ``deploy/envfile.py`` from the stack's instance
   configuration (the SSM parameter), as the bootstrap does, replacing only what moto can't
   model (``LOCAL_ONLY``: the database, the Redis of rate limits, the secrets, which moto's
   CloudFormation skips, and the EC2 metadata service);
3. turns moto's IAM enforcement on (``/moto-api/reset-auth``: from then on every request
   must be signed by a known key and allowed by its user's policies);
4. starts the web (gunicorn), a worker (``celery worker``) and one sweep of the ops timer,
   each with its role's environment and key, pushes a real upload through the API, the
   stack's bucket and queue, and waits until the worker has processed it.

What moto checks, and so what this proves: every action each process calls is in its role's
policy (a missing one is ``AccessDenied``), and S3 resources match. What it does not: the
resources of other services (moto asks about ``*``) and conditions; so each statement's
resources other than S3's are widened to ``*`` and its conditions dropped here (the tests
of ``tests/test_cloudformation.py`` check those in the template). docs/deploy-aws.md lists it.
"""

from __future__ import annotations

import ast
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import requests

from deploy import envfile

ROLES = ("web", "worker", "ops")
ROOT = Path(__file__).resolve().parent.parent
# What moto's CloudFormation leaves unresolved or what only EC2 has: replaced with local stand-ins.
LOCAL_ONLY = (
    "DATABASE_SECRET_ARN",
    "DATABASE_HOST",
    "DATABASE_PORT",
    "DATABASE_NAME",
    "RATELIMIT_STORAGE_URI",
    "SECRET_KEY_ARN",
    "FLOWER_PASSWORD_ARN",
    "WORKER_ASG_NAME",
)


def policy_document(document: Any) -> dict[str, Any]:
    """Return a policy document as data (moto's CloudFormation keeps some as Python's repr)."""
    if isinstance(document, str):
        try:
            return dict(json.loads(document))
        except json.JSONDecodeError:
            return dict(ast.literal_eval(document))
    return dict(document)


def enforceable(statement: dict[str, Any]) -> dict[str, Any]:
    """Return ``statement`` as moto can enforce it: S3's resources kept, others ``*``, no conditions.

    moto also names two actions as IAM does not: ``s3:HeadBucket`` (AWS authorises a HeadBucket
    with ``s3:ListBucket``) and CloudWatch's as ``monitoring:*`` (its endpoint's name; IAM's is
    ``cloudwatch:``). A statement granting IAM's name grants moto's too.
    """
    actions = [statement["Action"]] if isinstance(statement["Action"], str) else list(statement["Action"])
    kept = {k: v for k, v in statement.items() if k not in ("Condition", "Sid")}
    kept["Action"] = actions + ["s3:HeadBucket"] * ("s3:ListBucket" in actions)
    kept["Action"] += [a.replace("cloudwatch:", "monitoring:", 1) for a in actions if a.startswith("cloudwatch:")]
    if not all(action.startswith("s3:") for action in actions):
        kept["Resource"] = "*"
    return kept


def role_statements(iam: Any, role: str) -> list[dict[str, Any]]:
    """Return every Allow statement of a role: its inline policies and its customer-managed ones."""
    statements: list[dict[str, Any]] = []
    for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
        statements += policy_document(iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"])[
            "Statement"
        ]
    for attached in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]:
        if ":aws:policy/" in attached["PolicyArn"]:
            continue  # AWS's own (the SSM agent's): no process of ours acts with it
        policy = iam.get_policy(PolicyArn=attached["PolicyArn"])["Policy"]
        version = iam.get_policy_version(PolicyArn=attached["PolicyArn"], VersionId=policy["DefaultVersionId"])
        statements += policy_document(version["PolicyVersion"]["Document"])["Statement"]
    return [s for s in statements if s.get("Effect") == "Allow"]


def role_user(iam: Any, stack: str, role: str, statements: list[dict[str, Any]]) -> dict[str, str]:
    """Create an IAM user holding only ``statements``; return its access key as environment variables."""
    name = f"{stack}-{role}-rehearsal"
    iam.create_user(UserName=name)
    document = {"Version": "2012-10-17", "Statement": [enforceable(s) for s in statements]}
    iam.put_user_policy(UserName=name, PolicyName=f"videoproc-{role}", PolicyDocument=json.dumps(document))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


def enforce(endpoint: str, after: float) -> None:
    """Make moto server authenticate and authorise every request after the next ``after`` ones."""
    url, body = f"{endpoint}/moto-api/reset-auth", str(after).encode()  # a form body would be parsed away
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        answer.read()


def make_clip(path: Path) -> Path:
    """Write a 3-second 640x360 test clip with a tone."""
    argv = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i"]
    argv += ["testsrc2=size=640x360:rate=25:duration=3", "-f", "lavfi", "-i", "sine=duration=3"]
    subprocess.run(
        [*argv, "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-shortest", str(path)], check=True
    )
    return path


def wait(check: Callable[[], Any], timeout: float, what: str, log: Callable[[], str]) -> Any:
    """Return ``check()``'s first truthy value, polling twice a second; fail with ``log()`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.5)
    raise SystemExit(f"rehearsal: {what} within {timeout:.0f}s:\n{log()[-3000:]}")


class Processes:
    """The role processes of the rehearsal: started with their environment, stopped together, logs kept."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.folder / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(
            argv, env=dict(env), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.running.append((name, process))
        return process

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for _, process in self.running:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for _, process in self.running:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


DEBIAN_12_PYTHON = "3.11.2"  # Debian 12's own python3.11, what the instances run


def engine_majors() -> set[str]:
    """Return the PostgreSQL major versions RDS offers, from cfn-lint's record of RDS's engine versions."""
    import cfnlint

    path = Path(cfnlint.__file__).parent / "data/schemas/extensions/aws_rds_dbinstance/engine_version.json"
    for case in json.loads(path.read_text())["allOf"]:
        if case.get("if", {}).get("properties", {}).get("Engine", {}).get("const") == "postgres":
            return {version.split(".")[0] for version in case["then"]["properties"]["EngineVersion"]["enum"]}
    return set()


def aws_only_checks(template: Mapping[str, Any], sns: Any, topics: list[str]) -> list[str]:
    """Check what AWS refuses and moto lets pass; return what was checked (raise on a failure).

    - SNS topics keep the tags CloudFormation gave them: no process re-created one with
      kombu's tags (on AWS, ``CreateTopic`` with other tags is refused, and needs
      ``sns:TagResource``, which no role has);
    - the package admits Debian 12's own Python (moto runs whatever Python this is);
    - the database's engine version is one RDS offers (moto creates any).
    """
    from packaging.specifiers import SpecifierSet

    checked = []
    for arn in topics:
        tags = {t["Key"]: t["Value"] for t in sns.list_tags_for_resource(ResourceArn=arn)["Tags"]}
        if "ManagedBy" in tags:
            raise SystemExit(f"rehearsal: topic {arn} was created again by kombu (tags {tags})")
    checked.append(f"{len(topics)} SNS topics kept their stack's tags: no process called CreateTopic")
    project = (ROOT / "pyproject.toml").read_text()
    required = next(
        line.split("=", 1)[1].strip().strip('"') for line in project.splitlines() if line.startswith("requires-python")
    )
    if DEBIAN_12_PYTHON not in SpecifierSet(required):
        raise SystemExit(f"rehearsal: requires-python {required} refuses Debian 12's Python {DEBIAN_12_PYTHON}")
    checked.append(f"requires-python {required} admits Debian 12's Python {DEBIAN_12_PYTHON}")
    version = str(template["Resources"]["Database"]["Properties"]["EngineVersion"])
    if version.split(".")[0] not in engine_majors():
        raise SystemExit(f"rehearsal: RDS offers no PostgreSQL {version}")
    checked.append(f"RDS offers PostgreSQL {version} (a major: RDS picks the minor)")
    return checked


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rehearse(
    client: Callable[..., Any],
    endpoint: str,
    stack: str,
    template: Mapping[str, Any],
    say: Callable[[str], None] = print,
) -> str:
    """Run the deployed stack's roles under IAM enforcement and process one upload; return its video id."""
    cloudformation, iam = client("cloudformation"), client("iam")
    resources = cloudformation.list_stack_resources(StackName=stack)["StackResourceSummaries"]
    physical = {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in resources}
    outputs = {
        o["OutputKey"]: o["OutputValue"]
        for o in cloudformation.describe_stacks(StackName=stack)["Stacks"][0]["Outputs"]
    }
    config = json.loads(client("ssm").get_parameter(Name=outputs["InstanceConfigName"])["Parameter"]["Value"])
    manager = client("secretsmanager")
    stand_ins = {  # what moto's CloudFormation skips (Secrets Manager) or only EC2 and RDS give
        "SECRET_KEY_ARN": manager.create_secret(Name=f"{stack}-secret-key", SecretString=secrets.token_urlsafe(48))[
            "ARN"
        ],
        "FLOWER_PASSWORD_ARN": manager.create_secret(Name=f"{stack}-flower", SecretString=secrets.token_urlsafe(24))[
            "ARN"
        ],
    }
    config = {k: v for k, v in config.items() if k not in LOCAL_ONLY} | stand_ins

    keys = {role: role_user(iam, stack, role, role_statements(iam, physical[f"{role.title()}Role"])) for role in ROLES}
    admin = role_user(iam, stack, "admin", [{"Effect": "Allow", "Action": "*", "Resource": "*"}])
    with tempfile.TemporaryDirectory(prefix="videoproc-rehearsal-") as scratch, ExitStack() as cleanup:
        folder = Path(scratch)
        local = {
            "DATABASE_URL": os.environ.get("REHEARSAL_DATABASE_URL") or f"sqlite:///{folder / 'rehearsal.db'}",
            "RATELIMIT_STORAGE_URI": "memory://",
            "WORKER_TMP_DIR": str(folder),
            "SQS_WAIT_TIME_SECONDS": "1",
            "PATH": os.environ.get("PATH", ""),
        }
        passed = {"AWS_REGION": os.environ.get("AWS_REGION", "us-east-1"), "AWS_ENDPOINT_URL": endpoint}

        def environment(role: str) -> dict[str, str]:
            secret = lambda arn: manager.get_secret_value(SecretId=arn)["SecretString"]  # noqa: E731
            written = envfile.environment(config, secret, passed, role, cores=1)
            return {**written, **local, **keys[role], "WORKER_CONCURRENCY": "1"}

        envs = {role: environment(role) for role in ROLES}  # the secrets read before enforcement, as at boot
        processes = Processes(folder)
        cleanup.callback(processes.stop)
        cleanup.callback(enforce, endpoint, float("inf"))
        enforce(endpoint, 0)
        say("rehearsal: moto's IAM enforcement is on; each role runs with its own key")
        try:  # the proof that it is: the worker's key may not read the key that signs tokens
            _client_with(client, keys["worker"], "secretsmanager").get_secret_value(SecretId=config["SECRET_KEY_ARN"])
        except Exception as exc:
            if not _denied(str(exc)):
                raise
            say("rehearsal: the worker's key may not read SECRET_KEY (AccessDenied)")
        else:
            raise SystemExit("rehearsal: the worker's key read SECRET_KEY: IAM is not enforced")

        migrate = subprocess.run(
            [sys.executable, "-m", "deploy.migrate"], env=envs["web"], cwd=ROOT, capture_output=True, text=True
        )
        if migrate.returncode:
            raise SystemExit(f"rehearsal: the migration failed:\n{migrate.stdout}{migrate.stderr}")
        port = free_port()
        gunicorn = [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "app:create_app()",
        ]
        processes.start("web", gunicorn, envs["web"])
        worker = [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--concurrency", "1", "-n", "rehearsal@%h"]
        processes.start("worker", worker, envs["worker"])
        api = f"http://127.0.0.1:{port}"
        wait(
            lambda: _answers(f"{api}/readyz"),
            60,
            "the web is not ready",
            lambda: _body(f"{api}/readyz") + processes.log("web"),
        )
        wait(
            lambda: "ready." in processes.log("worker"), 90, "the worker did not start", lambda: processes.log("worker")
        )

        # letters and digits, whatever the draw: the sign-up's own rule
        email, password = f"rehearsal-{secrets.token_hex(4)}@example.com", f"Rehearsal-{secrets.token_hex(12)}-7"
        form = {"email": email, "password": password, "password_confirm": password}
        signup = requests.post(f"{api}/api/auth/signup", json=form, timeout=30)
        if signup.status_code != 201:
            raise SystemExit(f"rehearsal: the sign-up answered {signup.status_code} {signup.text}")
        token = requests.post(f"{api}/api/auth/login", json={"email": email, "password": password}, timeout=30).json()
        headers = {"Authorization": f"Bearer {token['access_token']}"}
        with make_clip(folder / "clip.mp4").open("rb") as f:
            answer = requests.post(
                f"{api}/api/videos/upload",
                headers=headers,
                files={"video_file": ("clip.mp4", f, "video/mp4")},
                data={"title": "rehearsal"},
                timeout=60,
            )
        if answer.status_code != 202:
            raise SystemExit(
                f"rehearsal: the upload answered {answer.status_code} {answer.text}\n{processes.log('web')[-3000:]}"
            )
        video_id = answer.json()["video_id"]

        def final() -> dict[str, Any] | None:
            video = requests.get(f"{api}/api/videos/{video_id}", headers=headers, timeout=30).json()
            return video if video["status"] in ("processed", "failed") else None

        video = wait(final, 240, f"video {video_id} was not processed", lambda: processes.log("worker"))
        if video["status"] != "processed":
            raise SystemExit(f"rehearsal: video {video_id} failed: {video}\n{processes.log('worker')[-3000:]}")
        sweep = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "app", "videos", "sweep", "--metrics", "--mailboxes"],
            env=envs["ops"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if sweep.returncode or _denied(sweep.stdout + sweep.stderr):
            raise SystemExit(f"rehearsal: the ops sweep failed:\n{sweep.stdout}{sweep.stderr}")
        for name in ("web", "worker"):  # a refusal the process survived (a log shipper, a background poll)
            if denied := _denied(processes.log(name)):
                raise SystemExit(f"rehearsal: the {name} was refused:\n" + "\n".join(denied[:10]))
        s3 = _client_with(client, admin, "s3")
        kept = s3.list_objects_v2(Bucket=config["S3_BUCKET"], Prefix="processed/")["KeyCount"]
        last = sweep.stdout.strip().splitlines()[-1:] or ["ok"]
        say(f"rehearsal: the ops sweep ran as its role: {last[0]}")
        bucket = config["S3_BUCKET"]
        topics = [physical["EventsTopic"], physical["ControlTopic"]]
        for line in aws_only_checks(template, _client_with(client, admin, "sns"), topics):
            say(f"rehearsal: {line}")
        say(f"rehearsal: processed video {video_id} under IAM enforcement ({kept} processed object(s) in {bucket})")
        return str(video_id)


def _denied(text: str) -> list[str]:
    return [line for line in text.splitlines() if "AccessDenied" in line or "not authorized" in line]


def _body(url: str) -> str:
    try:
        answer = requests.get(url, timeout=5)
    except requests.RequestException as exc:
        return f"{url}: {exc!r}\n"
    return f"{url}: {answer.status_code} {answer.text}\n"


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:
        return False


def _client_with(client: Callable[..., Any], key: Mapping[str, str], service: str) -> Any:
    return client(
        service, aws_access_key_id=key["AWS_ACCESS_KEY_ID"], aws_secret_access_key=key["AWS_SECRET_ACCESS_KEY"]
    )
