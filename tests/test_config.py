"""Settings from the environment, Celery's settings and error classification."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from sqlalchemy.exc import OperationalError

import celeryconfig
from config import ConfigError, load_settings, table
from config.settings import ELSEWHERE, REQUIRED, ROOT, broker_url, declared, variables
from deploy.envfile import environment
from tasks.errors import backoff, is_missing, is_transient

PRODUCTION = {
    "APP_ENV": "production",
    "SECRET_KEY": "Xq3-vN9_tL0bWc7Rz2pK5mHs8dJf1gYa4eUo6iTn",
    "DATABASE_URL": "postgres://u@db/videos",
    "RATELIMIT_STORAGE_URI": "redis://cache:6379/0",
    "TRUSTED_PROXIES": "2",
}


def test_development_defaults_point_at_local_aws() -> None:
    s = load_settings({"SECRET_KEY": "x"})
    assert s.AWS_ENDPOINT_URL == "http://127.0.0.1:5000"
    assert s.CELERY_BROKER_URL == "sqs://testing:testing@127.0.0.1:5000"
    assert s.SQLALCHEMY_DATABASE_URI.startswith("sqlite:///")
    assert s.VIDEO_ALLOWED_FORMATS == ("mp4", "mov")
    assert s.MAX_UPLOAD_BYTES == 1024**3


def test_production_uses_the_instance_role_and_real_endpoints() -> None:
    s = load_settings({**PRODUCTION, "S3_BUCKET": "videos"})
    assert s.AWS_ENDPOINT_URL is None and s.AWS_ACCESS_KEY_ID is None
    assert s.CELERY_BROKER_URL == "sqs://"
    assert s.SQLALCHEMY_DATABASE_URI == "postgresql://u@db/videos"


@pytest.mark.parametrize(
    "missing", ["SECRET_KEY", "DATABASE_URL", "S3_BUCKET", "RATELIMIT_STORAGE_URI", "TRUSTED_PROXIES"]
)
def test_production_has_no_default_secrets(missing: str) -> None:
    env = {**PRODUCTION, "S3_BUCKET": "videos"}
    del env[missing]
    with pytest.raises(ConfigError, match=missing):
        load_settings(env)


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("short", "at least 32"),
        ("k" * 32, "guessed"),
        ("abcdefghijklmnopqrstuvwxyz012345", "guessed"),
        ("passwordpasswordpassword12345678", "guessed"),
        ("qwertyuiopasdfghjklzxcvbnm123456", "guessed"),
    ],
)
def test_production_secret_must_be_strong(key: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_settings({**PRODUCTION, "S3_BUCKET": "videos", "SECRET_KEY": key})


def test_random_secrets_pass() -> None:
    import secrets

    for key in (secrets.token_urlsafe(32), secrets.token_hex(32), secrets.token_urlsafe(64)):
        assert key == load_settings({**PRODUCTION, "S3_BUCKET": "videos", "SECRET_KEY": key}).SECRET_KEY


def test_bad_values_are_named() -> None:
    with pytest.raises(ConfigError, match="OUTPUT_CRF"):
        load_settings({"OUTPUT_CRF": "high"})
    with pytest.raises(ConfigError, match="APP_ENV"):
        load_settings({"APP_ENV": "staging"})
    with pytest.raises(ConfigError, match="STALE_AFTER_SECONDS"):
        load_settings({"SQS_VISIBILITY_TIMEOUT": "60"})


def test_course_profile_is_one_configuration_away() -> None:
    s = load_settings(
        {"VIDEO_MIN_DURATION": "20", "VIDEO_MAX_DURATION": "60", "VIDEO_MIN_WIDTH": "1920", "VIDEO_MIN_HEIGHT": "1080"}
    )
    assert (s.VIDEO_MIN_DURATION, s.VIDEO_MAX_DURATION, s.VIDEO_MIN_WIDTH) == (20, 60, 1920)


def test_broker_url_quotes_credentials() -> None:
    assert broker_url("AK/1", "a+b/c", None) == "sqs://AK%2F1:a%2Bb%2Fc@"


def test_celery_settings_for_sqs() -> None:
    assert celeryconfig.task_acks_late and celeryconfig.task_reject_on_worker_lost
    assert celeryconfig.worker_prefetch_multiplier == 1 and celeryconfig.result_backend is None
    s = load_settings({"SQS_QUEUE_PREFIX": "prod-", "SQS_QUEUE_URL": "https://sqs.example/1/prod-videoproc-videos"})
    conf = celeryconfig.environment_settings(s)
    options = conf["broker_transport_options"]
    assert (options["wait_time_seconds"], options["polling_interval"]) == (20, 0)
    assert options["visibility_timeout"] == 120
    assert options["queue_name_prefix"] == "prod-" and options["is_secure"] is False
    assert "predefined_queues" not in options, "kombu would refuse the mailbox, reply and event queues"
    assert conf["task_routes"][celeryconfig.PROCESS_TASK] == {"queue": "videoproc-videos"}


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (client_error("SlowDown", 503), True),
        (client_error("InternalError", 500), True),
        (client_error("AccessDenied", 403), False),
        (client_error("NoSuchKey", 404), False),
        (EndpointConnectionError(endpoint_url="http://s3"), True),
        (OperationalError("SELECT 1", {}, Exception("server closed the connection")), True),
        (ConnectionResetError(), True),
        (ValueError("bug"), False),
    ],
)
def test_transient_errors(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_missing_original_is_permanent() -> None:
    assert is_missing(client_error("NoSuchKey", 404)) and not is_missing(client_error("SlowDown", 503))


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff(n, 30) for n in range(6)] == [2, 4, 8, 16, 30, 30]


def test_the_readme_table_is_made_from_the_declarations(capsys: pytest.CaptureFixture[str]) -> None:
    assert table.main(["--check"]) == 0, capsys.readouterr().err
    readme = (ROOT / "README.md").read_text()
    listed = [n for n in (*variables(), *ELSEWHERE) if f"`{n}`" in readme[readme.index(table.BEGIN) :]]
    assert len(listed) == len(variables()) + len(ELSEWHERE) > 100


def test_one_declaration_gives_the_reader_its_rules() -> None:
    assert (
        declared("S3_BUCKET").production is REQUIRED and declared("SQLALCHEMY_DATABASE_URI").variable == "DATABASE_URL"
    )
    production = {"APP_ENV": "production", "VIDEOPROC_ROLE": "worker", "DATABASE_URL": "postgres://u@h/d"}
    production |= {"RATELIMIT_STORAGE_URI": "redis://r", "TRUSTED_PROXIES": "1"}
    with pytest.raises(ConfigError, match="S3_BUCKET must be set when APP_ENV=production"):
        load_settings(production)
    s = load_settings({**production, "S3_BUCKET": "b", "AWS_DEFAULT_REGION": "eu-west-1"})
    assert (s.SQLALCHEMY_DATABASE_URI, s.AWS_REGION, s.AWS_ENDPOINT_URL, s.CORS_ORIGINS) == (
        "postgresql://u@h/d",  # cleaned
        "eu-west-1",  # the fallback variable
        None,  # production's own default
        (),
    )
    assert s.SECRET_KEY == "" and s.SQS_DLQ_NAME == "videoproc-videos-dlq", "computed from what was read before"
    with pytest.raises(ConfigError, match="SECRET_KEY must be set"):
        load_settings({**production, "S3_BUCKET": "b", "VIDEOPROC_ROLE": "web"})
    with pytest.raises(ConfigError, match="VIDEOPROC_ROLE must be one of"):
        load_settings({"VIDEOPROC_ROLE": "cook"})


def test_the_readme_layout_names_every_module() -> None:
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    layout = layout[: layout.index("\n## ", 1)]
    blocks: dict[str, str] = {}  # each top-level folder's lines, from its name to the next folder's
    for line in layout.splitlines():
        if line and not line.startswith(" ") and "/ " in line:
            folder = line.split("/", 1)[0]
        if blocks or "/ " in line:
            blocks[folder] = blocks.get(folder, "") + line + "\n"
    packages = ("app", "app/api", "client", "tasks", "ops", "domain", "media", "config", "deploy", "bench")
    modules = [p for pkg in packages for p in sorted((ROOT / pkg).glob("*.py")) if p.name != "__init__.py"]
    assert len(modules) > 40
    misplaced = [str(p.relative_to(ROOT)) for p in modules if p.name not in blocks[p.relative_to(ROOT).parts[0]]]
    assert misplaced == [], "name each module under its own folder in the README's layout"


def test_the_readme_states_the_import_contracts() -> None:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c["layers"] for c in contracts if c["type"] == "layers")
    assert f"`{' → '.join(layers)}`" in (ROOT / "README.md").read_text()


def test_settings_are_typed_and_read_only() -> None:
    s = load_settings({"SECRET_KEY": "x", "OUTPUT_CRF": "20"})
    assert s.OUTPUT_CRF == 20 and isinstance(s.VIDEO_MAX_FPS, float)
    with pytest.raises(AttributeError):
        s.OUTPUT_CRFF  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.OUTPUT_CRF = 30  # type: ignore[misc]
    with pytest.raises(TypeError, match="OUTPUT_CRFF"):
        s.replace(OUTPUT_CRFF=30)
    with pytest.raises(ConfigError, match="STALE_AFTER_SECONDS"):
        s.replace(STALE_AFTER_SECONDS=1)  # replace checks again


@pytest.mark.parametrize(
    ("name", "meant"),
    [("VIDEO_MAX_DURATON", "VIDEO_MAX_DURATION"), ("SQS_VISIBILTY_TIMEOUT", "SQS_VISIBILITY_TIMEOUT")],
)
def test_a_misspelt_variable_stops_the_process(name: str, meant: str) -> None:
    with pytest.raises(ConfigError, match=f"{name} is not a setting; did you mean {meant}"):
        load_settings({"SECRET_KEY": "x", name: "60"})


def test_other_variables_are_left_alone() -> None:
    env = {
        "SECRET_KEY": "x",
        "SECRET_KEY_ARN": "arn:x",
        "LOG_GROUP_PREFIX": "/p/",
        "PATH": "/bin",
        "VIDEOPROC_ROLE": "web",
        # the AWS SDK's own variables, near misses of ours by spelling: its namespace, not a typo of ours
        "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9",
        "AWS_ENDPOINT_URL_SQS": "http://127.0.0.1:9",
        "AWS_MAX_ATTEMPTS": "5",
    }
    assert load_settings(env).SECRET_KEY == "x"


def test_values_are_checked_and_secrets_kept_out_of_reprs() -> None:
    s = load_settings({"SECRET_KEY": "k" * 40, "DATABASE_URL": "postgresql://u:pw-1@db/v"})
    with pytest.raises(ConfigError, match="OUTPUT_CRF must be <class 'int'>"):
        s.replace(OUTPUT_CRF="20")
    assert s.replace(VIDEO_MIN_DURATION=20).VIDEO_MIN_DURATION == 20
    assert "kkkk" not in repr(s) and "pw-1" not in repr(s) and "testing@" not in repr(s)


def test_a_worker_instance_gets_one_pool_process_more_than_cores() -> None:
    assert environment({}, str, {}, "worker", cores=4)["WORKER_CONCURRENCY"] == "5"
    assert environment({"WORKER_CONCURRENCY": "1"}, str, {}, "worker", cores=4)["WORKER_CONCURRENCY"] == "1"
    assert "WORKER_CONCURRENCY" not in environment({}, str, {}, "web", cores=4)


def test_only_web_instances_get_secret_key_and_the_admin_login() -> None:
    config = {
        "SECRET_KEY_ARN": "arn:key",
        "DATABASE_SECRET_ARN": "arn:master",
        "DATABASE_HOST": "db.internal",
        "DATABASE_PORT": "5432",
        "DATABASE_NAME": "videoproc",
    }
    read: list[str] = []

    def secret(arn: str) -> str:
        read.append(arn)
        return "k" * 64

    web, worker, ops = (environment(config, secret, {}, role, cores=2) for role in ("web", "worker", "ops"))
    assert read == ["arn:key"], "the master login is never read at boot, only by the migration unit"
    assert web["SECRET_KEY"] == "k" * 64 and "SECRET_KEY" not in worker and "SECRET_KEY" not in ops
    assert web["DATABASE_URL"] == "postgresql://videoproc_web@db.internal:5432/videoproc?sslmode=require"
    assert worker["DATABASE_URL"].startswith("postgresql://videoproc_worker@") and worker["DATABASE_IAM_AUTH"] == "true"
    assert web["DATABASE_ADMIN_SECRET_ARN"] == "arn:master" and "DATABASE_ADMIN_SECRET_ARN" not in worker
    assert (web["VIDEOPROC_ROLE"], worker["VIDEOPROC_ROLE"]) == ("web", "worker")


def test_production_wants_secret_key_on_the_web_only() -> None:
    without = {k: v for k, v in PRODUCTION.items() if k != "SECRET_KEY"} | {"S3_BUCKET": "videos"}
    with pytest.raises(ConfigError, match="SECRET_KEY must be set"):
        load_settings(without)
    with pytest.raises(ConfigError, match="SECRET_KEY must be set"):
        load_settings({**without, "VIDEOPROC_ROLE": "web"})
    worker = load_settings({**without, "VIDEOPROC_ROLE": "worker"})
    assert worker.SECRET_KEY == "" and not worker.signs_tokens
    with pytest.raises(ConfigError, match="VIDEOPROC_ROLE"):
        load_settings({**PRODUCTION, "S3_BUCKET": "videos", "VIDEOPROC_ROLE": "admin"})
