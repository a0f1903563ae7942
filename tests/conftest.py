"""Fixtures: PostgreSQL (or SQLite), moto server, the app, users, clips and a real worker."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import flask_migrate
import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask_sqlalchemy.session import Session as FlaskSession
from moto.server import ThreadedMotoServer
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from app import create_app
from config import load_settings
from domain.extensions import db, get_settings
from domain.models import Usage, User, Video, WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent
from domain.storage import aws_client, get_storage
from ops.aws import ensure_bucket, ensure_queues, queue_url
from ops.metrics import COUNTS
from tests.clips import make_clip, make_image

ROOT = Path(__file__).resolve().parent.parent
# The tiers (make test-unit, make test): a test is ``unit`` unless it uses one of these fixtures
# (a server, a database server, FFmpeg, a worker) or is marked ``system`` or ``e2e``.
SERVER_FIXTURES = frozenset({"database_url", "redis_url", "aws_endpoint", "clip", "worker", "start_worker"})
# Tests with these commit for real (other processes read their rows); the others are rolled back.
COMMITTING_FIXTURES = frozenset({"worker", "start_worker", "web_tier", "e2e_app", "stack"})
TOOLS = frozenset({"ffmpeg", "ffprobe", "bwrap", "celery", "gunicorn", "nginx", "moto_server", "systemd-nspawn"})
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# The suite signs up hundreds of users from one address: only the rate-limit tests use real limits.
GENEROUS = "100000 per minute"
PASSWORD = "correct-horse-1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its tier: ``unit`` or ``system``."""
    for item in items:
        needs = SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        tier = "system" if needs or item.get_closest_marker("e2e") or item.get_closest_marker("system") else "unit"
        item.add_marker(tier)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the test, so fixtures can tell at teardown that it failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(autouse=True)
def _unit_tier_stays_in_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail a ``unit`` test that reaches a server over TCP or starts FFmpeg, bubblewrap or a service."""
    if request.node.get_closest_marker("unit") is None:
        return
    connect, popen_init = socket.socket.connect, subprocess.Popen.__init__

    def guarded_connect(sock: socket.socket, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"a unit test connected to {address}: mark it system (tests/conftest.py)")
        return connect(sock, address)

    def guarded_popen(self: subprocess.Popen, args: Any, *rest: Any, **kwargs: Any) -> None:
        argv = [str(a) for a in ([args] if isinstance(args, str | os.PathLike) else args)]
        modules = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-m"]  # python -m celery, -m media.jail
        if Path(argv[0]).name in TOOLS or any(m.split(".")[0] in TOOLS | {"media", "deploy"} for m in modules):
            raise AssertionError(f"a unit test started {argv[0]}: mark it system (tests/conftest.py)")
        popen_init(self, args, *rest, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(subprocess.Popen, "__init__", guarded_popen)


def metric(text: str, name: str, **labels: str) -> float:
    """Return the value of one sample in a Prometheus text page (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def free_port() -> int:
    """Return a TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh PostgreSQL database for this run; SQLite when no PostgreSQL answers (never in CI)."""
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        conn = admin.connect()
    except OperationalError:
        if os.environ.get("CI"):
            raise RuntimeError(f"CI runs the suite against PostgreSQL, but {POSTGRES_URL} does not answer") from None
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"
        return
    name = f"videoproc_test_{os.getpid()}"
    with conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """Redis for rate limits (shared by web processes); memory when none answers (never in CI)."""
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError:
        if os.environ.get("CI"):
            raise RuntimeError(f"CI runs the suite against Redis, but {REDIS_URL} does not answer") from None
        return "memory://"
    return REDIS_URL


@pytest.fixture(scope="session")
def aws_endpoint() -> Iterator[str]:
    """moto in server mode: S3, SQS, SNS and CloudWatch over HTTP, for every process."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def base_env(
    database_url: str, aws_endpoint: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Environment variables shared by the test process and the worker processes."""
    scratch = tmp_path_factory.mktemp("scratch")
    limits = ["LOGIN_LIMIT_PER_ADDRESS", "LOGIN_LIMIT_PER_ACCOUNT_ADDRESS", "SIGNUP_LIMIT_PER_ADDRESS"]
    limits += ["SIGNUP_LIMIT_PER_ACCOUNT", "UPLOAD_LIMIT_PER_USER"]
    return {
        "RATELIMIT_STORAGE_URI": redis_url,
        "RATELIMIT_KEY_PREFIX": f"videoproc-test-{uuid.uuid4().hex[:8]}",
        **dict.fromkeys(limits, GENEROUS),
        "LOGIN_DELAY_FREE_FAILURES": "1000000",  # tests that fail logins on purpose set their own
        "PASSWORD_HASH": "scrypt:1024:8:1",  # the suite's many sign-ups: a cheap hash (production: 32768:8:3)
        "APP_ENV": "testing",
        "SECRET_KEY": "test-secret-key-of-at-least-32-bytes",
        "DATABASE_URL": database_url,
        "AWS_ENDPOINT_URL": aws_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "S3_BUCKET": "videoproc-test",
        "SQS_WAIT_TIME_SECONDS": "1",
        "WORKER_TMP_DIR": str(scratch),
        "UPLOAD_TMP_DIR": str(scratch),
        "LOG_LEVEL": "INFO",
    }


@pytest.fixture(scope="session")
def make_app(base_env: dict[str, str]) -> Iterator[Callable[..., Flask]]:
    """Build an app from the test environment plus ``env`` variables and ``overrides`` (settings keys)."""
    apps: list[Flask] = []

    def factory(env: dict[str, str] | None = None, **overrides: Any) -> Flask:
        settings = load_settings({**base_env, **(env or {})}).replace(**overrides)
        apps.append(create_app(settings))
        return apps[-1]

    yield factory
    for flask_app in apps:  # close pooled connections before the database is dropped
        with flask_app.app_context():
            db.engine.dispose()


@pytest.fixture(scope="session")
def app(make_app: Callable[..., Flask]) -> Flask:
    """The app of the API tests: migrated database, bucket and a queue no worker reads."""
    flask_app = make_app({"SQS_QUEUE_NAME": "api-tests"})
    with flask_app.app_context():
        flask_migrate.upgrade(directory=str(ROOT / "migrations"))
        ensure_bucket(get_settings(flask_app))
        ensure_queues(get_settings(flask_app))
    return flask_app


class _JoinedSession(FlaskSession):
    """Flask-SQLAlchemy's session on the test's connection (its own ``get_bind`` picks the engine)."""

    def get_bind(self, *args: Any, **kwargs: Any) -> Any:
        return self.bind

    def connection(self, bind_arguments: Any = None, execution_options: Any = None) -> Any:
        """The test's transaction keeps its isolation (the read views ask for autocommit)."""
        return super().connection(bind_arguments)


def _empty(flask_app: Flask) -> None:
    with flask_app.app_context():
        for model in (WebhookAttempt, WebhookDelivery, WebhookEvent, WebhookEndpoint, Video, Usage):
            db.session.query(model).delete()
        db.session.query(User).delete()
        db.session.commit()


@pytest.fixture(autouse=True)
def _clean(request: pytest.FixtureRequest) -> Iterator[None]:
    """Give every test that uses the app empty tables and an empty bucket.

    A test whose rows only its own process reads runs in one transaction, rolled back after
    it (the app's commits are savepoints inside it). A test with other processes or
    connections (a worker, gunicorn, threads: its fixtures say so, or ``e2e``, or ``commits``)
    commits for real, and the tables are emptied before and after it.
    """
    if "app" not in request.fixturenames:
        yield
        return
    flask_app: Flask = request.getfixturevalue("app")
    with flask_app.app_context():
        for prefix in ("originals/", "processed/", "quarantine/"):
            get_storage().delete_prefix(prefix)
    node = request.node
    if COMMITTING_FIXTURES.intersection(request.fixturenames) or any(map(node.get_closest_marker, ("commits", "e2e"))):
        _empty(flask_app)
        yield
        _empty(flask_app)
        return
    with flask_app.app_context():
        connection = db.engine.connect()
    outer, shared = connection.begin(), db.session
    options = {"bind": connection, "join_transaction_mode": "create_savepoint", "class_": _JoinedSession}
    db.session = db._make_scoped_session(options)
    try:
        yield
    finally:
        db.session = shared
        outer.rollback()
        connection.close()


@pytest.fixture
def ctx(app: Flask) -> Iterator[None]:
    """An application context for tests that read the database or S3 directly."""
    with app.app_context():
        yield


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@contextmanager
def statements(client: FlaskClient) -> Iterator[list[str]]:
    """Collect the SQL statements the app sends to its database meanwhile."""
    sent: list[str] = []

    def count(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        sent.append(sql.split(None, 1)[0])

    with client.application.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", count)


def post_upload(client: FlaskClient, headers: dict[str, str], path: Path | None, title: str | None = "My clip") -> Any:
    """POST a multipart upload; ``None`` leaves a field out."""
    data: dict[str, Any] = {}
    if path is not None:
        data["video_file"] = FileStorage(io.BytesIO(path.read_bytes()), filename=path.name)
    if title is not None:
        data["title"] = title
    # Encoded in memory: the test client would otherwise spool a large body to a file it never closes.
    boundary, body = encode_multipart(data)
    content_type = f"multipart/form-data; boundary={boundary}"
    return client.post("/api/videos/upload", data=body, headers=headers, content_type=content_type)


def signup_and_login(client: FlaskClient, email: str) -> dict[str, str]:
    """Create a user and return its Authorization header."""
    body = {"email": email, "password": PASSWORD, "password_confirm": PASSWORD}
    assert client.post("/api/auth/signup", json=body).status_code == 201
    token = client.post("/api/auth/login", json={"email": email, "password": PASSWORD}).json["access_token"]
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def auth(client: FlaskClient) -> dict[str, str]:
    return signup_and_login(client, "player@example.com")


CLIPS: dict[str, Callable[[Path], Path]] = {
    "portrait.mp4": lambda p: make_clip(p, 1080, 1920, 35),
    "small.mp4": lambda p: make_clip(p, 640, 480, 4),
    "clip.mov": lambda p: make_clip(p, 640, 360, 2, extra=("-f", "mov")),
    "silent.mp4": lambda p: make_clip(p, 480, 360, 2, audio=False),
    "blip.mp4": lambda p: make_clip(p, 640, 480, 0.4),
    "tiny.mp4": lambda p: make_clip(p, 160, 120, 2),
    "clip.mkv": lambda p: make_clip(p, 640, 480, 2),
    "still.png": lambda p: make_image(p),
}


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Return the path of a named test clip, generating it on first use."""
    folder = tmp_path_factory.mktemp("clips")

    def get(name: str) -> Path:
        path = folder / name
        if not path.exists():
            CLIPS[name](path)
        return path

    return get


@pytest.fixture(scope="session")
def e2e_app(make_app: Callable[..., Flask], app: Flask) -> Flask:
    """The app of the end-to-end tests; its queue is served by ``worker``."""
    flask_app = make_app({"SQS_QUEUE_NAME": "e2e"})
    with flask_app.app_context():
        ensure_queues(get_settings(flask_app))
    return flask_app


class Worker:
    """A ``celery -A tasks worker`` subprocess (in its own process group) and its log."""

    def __init__(
        self,
        env: dict[str, str],
        log: Path,
        name: str,
        concurrency: int = 2,
        args: tuple[str, ...] = (),
        nice: int = 0,
    ) -> None:
        self.log = log
        self.metrics_port = int(env.get("WORKER_METRICS_PORT") or free_port())  # its events, as Prometheus counts
        env = {**env, "WORKER_METRICS_PORT": str(self.metrics_port)}
        argv = [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--loglevel", "INFO"]
        argv += ["--concurrency", str(concurrency), "--hostname", f"{name}@%h", "--without-mingle", "--without-gossip"]
        argv += args
        if nice:  # as the Procfile's and the unit's webhook workers run
            argv = ["nice", "-n", str(nice), *argv]
        with log.open("wb") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def metric(self, name: str, **labels: str) -> float:
        """Return one of the worker's Prometheus samples (0 when it has none): what happened, counted."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as answer:
            return metric(answer.read().decode(), name, **labels)

    def lines(self, *needles: str) -> list[str]:
        """Return the log lines that contain every needle."""
        return [line for line in self.text().splitlines() if all(n in line for n in needles)]

    def tail(self, count: int = 40) -> str:
        """Return the last ``count`` lines of the worker's own log (not moto's request lines)."""
        return "\n".join([line for line in self.text().splitlines() if "logger=werkzeug" not in line][-count:])

    def wait_ready(self, timeout: float = 90, poll: float = 0.2) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "ready." in self.text():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(poll)
        raise RuntimeError(f"worker did not start:\n{self.log.read_text(errors='replace')[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def start_worker(
    base_env: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Worker]]:
    """Start workers with extra environment variables; stop them after the test (their logs' tails if it failed)."""
    started: list[Worker] = []

    def start(name: str, env: dict[str, str], concurrency: int = 1, args: tuple[str, ...] = ()) -> Worker:
        w = Worker({**base_env, **env}, tmp_path / f"{name}.log", name, concurrency, args)
        started.append(w)
        w.wait_ready()
        return w

    yield start
    failed = getattr(getattr(request.node, "report_call", None), "failed", False)
    for w in started:
        w.stop()
        if failed:
            sys.stderr.write(f"\n--- the worker {w.log.stem}'s log, its end ---\n{w.tail()}\n")


@pytest.fixture(scope="session")
def worker(e2e_app: Flask, base_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """A real worker process consuming the end-to-end queue."""
    w = Worker({**base_env, "SQS_QUEUE_NAME": "e2e"}, tmp_path_factory.mktemp("worker") / "worker.log", "e2e")
    try:
        w.wait_ready()
        yield w
    finally:
        w.stop()
        print(f"worker log: {w.log}")


def get(url: str, timeout: float = 10) -> tuple[int, bytes, float]:
    start = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read(), time.monotonic() - start
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), time.monotonic() - start


def answers(url: str) -> bool:
    """Return whether ``url`` answers 200 (False while nothing listens there yet)."""
    try:
        return get(url)[0] == 200
    except OSError:  # refused: not listening yet
        return False


@contextmanager
def serving(base_env: dict[str, str], env: dict[str, str]) -> Iterator[str]:
    """gunicorn (2 workers x 4 threads, as in the Procfile) on a socket, nginx on a port; yield nginx's URL."""
    folder = Path(tempfile.mkdtemp(prefix="videoproc-web-"))
    folder.chmod(0o755)  # nginx's workers may run as another user
    sock, port = folder / "gunicorn.sock", free_port()
    full = {**os.environ, **base_env, "TRUSTED_PROXIES": "1", **env}
    full["PROMETHEUS_MULTIPROC_DIR"] = str(folder / "metrics")
    web = ["--config", "python:deploy.gunicorn_conf", "--workers", "2", "--threads", "4"]
    web += ["--bind", f"unix:{sock}", "--timeout", "600", "app:create_app()"]
    proxy = ["--listen", f"127.0.0.1:{port}", "--upstream", f"unix:{sock}", "--prefix", str(folder / "nginx")]
    gunicorn = subprocess.Popen([sys.executable, "-m", "gunicorn", *web], cwd=ROOT, env=full)
    nginx = subprocess.Popen([sys.executable, "-m", "deploy.nginx", *proxy], cwd=ROOT, env=full)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: sock.exists() and answers(f"{url}/healthz"), timeout=60)
        yield url
    finally:
        for proc in (nginx, gunicorn):
            proc.terminate()
            proc.wait(20)


@pytest.fixture
def web_tier(app: Flask, base_env: dict[str, str]) -> Iterator[str]:
    """The web tier on the API tests' queue (no worker reads it); yield its URL."""
    with serving(base_env, {"SQS_QUEUE_NAME": "api-tests"}) as url:
        yield url


def wait_for(predicate: Callable[[], Any], timeout: float = 120, interval: float = 0.2, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds, saying ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"{what or 'condition'} not met within {timeout}s")


def queue_empty(flask_app: Flask) -> bool:
    """Return whether the app's work queue holds no message at all: none waiting, in flight or delayed.

    Once a delivery is acknowledged and nothing is left, no redelivery can come: the check
    that lets a test assert "never again" without sleeping.
    """
    sqs = aws_client("sqs", get_settings(flask_app))
    found = sqs.get_queue_attributes(QueueUrl=queue_url(get_settings(flask_app), sqs), AttributeNames=COUNTS)[
        "Attributes"
    ]
    return all(int(found.get(name, 0)) == 0 for name in COUNTS)


def unique_email() -> str:
    return f"user-{uuid.uuid4().hex[:8]}@example.com"
