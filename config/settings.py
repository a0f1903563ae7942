"""Build the typed settings of one environment from environment variables.

Every variable, its default and its meaning is listed in the README's configuration table.
Production (``APP_ENV=production``) has no default for secrets or for where the data lives.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import secrets
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from zxcvbn import zxcvbn

from config.env import ConfigError, env_bool, env_float, env_int, env_list, env_str

ROOT = Path(__file__).resolve().parent.parent
INSTANCE_DIR = ROOT / "instance"
ASSETS_DIR = ROOT / "assets"
LOCAL_AWS = "http://127.0.0.1:5000"
# Where `make run` serves the page: the browser PUTs parts to the bucket from there.
LOCAL_SITE = "http://127.0.0.1:8000,http://localhost:8000"
ENVIRONMENTS = ("development", "testing", "production")
ROLES = ("", "web", "worker", "ops")
MIN_SECRET_BYTES = 32
# zxcvbn's estimate of the guesses needed to find the key: 10^30 is about 100 bits.
MIN_SECRET_GUESSES_LOG10 = 30

# Variables read elsewhere that check_names must not take for misspellings.
OTHER_VARIABLES = frozenset(
    {
        "AWS_DEFAULT_REGION",
        "DATABASE_URL",
        "LOG_GROUP_PREFIX",
        "SECRET_KEY_ARN",
        "DATABASE_SECRET_ARN",
        "DATABASE_ADMIN_SECRET_ARN",
        "WORKER_CONCURRENCY",
    }
)

__all__ = ["ConfigError", "Settings", "broker_url", "load_settings"]


def _dev_secret_key() -> str:
    """Return a random key kept in instance/ so every local process signs alike."""
    path = INSTANCE_DIR / "dev-secret-key"
    if not path.exists():
        INSTANCE_DIR.mkdir(exist_ok=True)
        path.write_text(secrets.token_urlsafe(48))
    return path.read_text().strip()


def secret_problem(key: str) -> str | None:
    """Return why ``key`` is too weak to sign tokens with, or None.

    Strength, not length: zxcvbn finds repeats, sequences, keyboard walks and dictionary
    words, so 'a' * 32 fails while ``secrets.token_urlsafe(32)`` passes.
    """
    if len(key.encode()) < MIN_SECRET_BYTES:
        return f"it must be at least {MIN_SECRET_BYTES} bytes (HS256)"
    # zxcvbn reads at most 72 characters: score a long key piece by piece (the guesses multiply).
    guesses_log10 = sum(zxcvbn(key[i : i + 64])["guesses_log10"] for i in range(0, len(key), 64))
    if guesses_log10 < MIN_SECRET_GUESSES_LOG10:
        return (
            f"it could be guessed in about 10^{guesses_log10:.0f} tries; "
            "use a random value such as `python -c 'import secrets; print(secrets.token_urlsafe(48))'`"
        )
    return None


def _required(env: Mapping[str, str], name: str) -> str:
    value = env_str(env, name)
    if value is None:
        raise ConfigError(f"{name} must be set when APP_ENV=production")
    return value


def _database_url(env: Mapping[str, str], production: bool) -> str:
    url = _required(env, "DATABASE_URL") if production else env_str(env, "DATABASE_URL")
    if url is None:
        INSTANCE_DIR.mkdir(exist_ok=True)
        url = f"sqlite:///{INSTANCE_DIR / 'videoproc.db'}"
    if url.startswith("postgres://"):  # Heroku-style URLs
        url = "postgresql://" + url[len("postgres://") :]
    return url


def broker_url(key: str | None, secret: str | None, endpoint: str | None) -> str:
    """Return the kombu SQS URL: credentials and endpoint only when they are set."""
    auth = f"{quote(key, safe='')}:{quote(secret, safe='')}@" if key and secret else ""
    host = urlsplit(endpoint).netloc if endpoint else ""
    return f"sqs://{auth}{host}"


# Flask's extensions' own keys, the same everywhere.
FIXED_CONFIG: dict[str, Any] = {
    # hide_parameters: a failed statement's log line never carries its values (password hashes).
    "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": True, "hide_parameters": True},
    "RATELIMIT_HEADERS_ENABLED": True,
    "RATELIMIT_HEADER_RETRY_AFTER_VALUE": "delta-seconds",
    # Redis down: keep limiting, per process, rather than answer 500 or let everything through.
    "RATELIMIT_IN_MEMORY_FALLBACK_ENABLED": True,
    "RATELIMIT_SWALLOW_ERRORS": True,
}


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Every setting, typed and read-only; the README's configuration table says what each means.

    Reading a name that is not here is an AttributeError (and a type error in ``make lint``),
    ``replace`` with one is a TypeError, and a variable in the environment that is one letter
    off a setting's name stops the process at start (``check_names``).
    """

    APP_ENV: str
    # web | worker | ops on an instance (the bootstrap's VIDEOPROC_ROLE); empty: every role (local)
    VIDEOPROC_ROLE: str
    SECRET_KEY: str = field(repr=False)
    JWT_EXPIRES_SECONDS: int
    SQLALCHEMY_DATABASE_URI: str = field(repr=False)
    # Connect with a fresh RDS IAM token as the URL's user (no password to rotate or leak)
    DATABASE_IAM_AUTH: bool
    LOG_LEVEL: str
    LOG_GROUP: str
    METRICS_TOKEN: str = field(repr=False)
    WORKER_METRICS_PORT: int
    # Accounts and abuse
    CORS_ORIGINS: tuple[str, ...]
    RATELIMIT_STORAGE_URI: str = field(repr=False)
    RATELIMIT_ENABLED: bool
    RATELIMIT_KEY_PREFIX: str
    LOGIN_LIMIT_PER_ADDRESS: str
    LOGIN_LIMIT_PER_ACCOUNT_ADDRESS: str
    LOGIN_DELAY_FREE_FAILURES: int
    LOGIN_DELAY_MAX_SECONDS: int
    PASSWORD_HASH: str
    SIGNUP_LIMIT_PER_ADDRESS: str
    SIGNUP_LIMIT_PER_ACCOUNT: str
    # Every upload attempt counts, refused or not: each costs a probe.
    UPLOAD_LIMIT_PER_USER: str
    UPLOAD_RESUME_LIMIT_PER_USER: str
    UPLOAD_COMPLETE_LIMIT_PER_USER: str
    # Uploads one client address may have in flight through nginx (deploy/nginx.conf.template).
    UPLOADS_PER_ADDRESS: int
    # AWS
    AWS_REGION: str
    AWS_ENDPOINT_URL: str | None
    S3_ENDPOINT_URL: str | None
    SQS_ENDPOINT_URL: str | None
    AWS_ACCESS_KEY_ID: str | None
    AWS_SECRET_ACCESS_KEY: str | None = field(repr=False)
    S3_BUCKET: str
    PRESIGNED_URL_EXPIRES: int
    SQS_QUEUE_NAME: str
    SQS_QUEUE_PREFIX: str
    SQS_QUEUE_URL: str | None
    # Short: the worker keeps extending the messages it holds, so a dead worker's job
    # comes back within this many seconds while a live job of any length never does.
    SQS_VISIBILITY_TIMEOUT: int
    SQS_DLQ_NAME: str
    SQS_MAX_RECEIVE_COUNT: int
    SQS_WAIT_TIME_SECONDS: int
    SQS_POLLING_INTERVAL: float
    # The stack's SNS topics for remote control and events; unset: kombu creates its own.
    SNS_CONTROL_TOPIC_ARN: str | None
    SNS_EVENTS_TOPIC_ARN: str | None
    # Upload validation
    MAX_UPLOAD_BYTES: int
    # Direct uploads (domain/direct.py)
    UPLOAD_PART_BYTES: int
    UPLOAD_EXPIRES_SECONDS: int
    IDEMPOTENCY_KEY_SECONDS: int
    IDEMPOTENCY_KEYS_PER_USER: int
    # Refused originals are kept under quarantine/ this long (the bucket's lifecycle rule), never deleted in line.
    QUARANTINE_DAYS: int
    # An S3 original with no row, or a multipart upload with none, older than this is removed by the sweeper.
    ORPHAN_AFTER_SECONDS: int
    # Every body but an upload's is small: JSON routes read at most this many bytes.
    MAX_JSON_BYTES: int
    MAX_FORM_PARTS: int
    # Text fields are parsed in memory; werkzeug reads in 64 KiB chunks, so this must be larger.
    MAX_FORM_MEMORY_SIZE: int
    # Proxies in front of gunicorn whose X-Forwarded-For is trusted (nginx: 1; ALB and nginx: 2).
    # Required in production: guessing it wrong either lets clients forge their address or gives all one address.
    TRUSTED_PROXIES: int
    UPLOAD_TMP_DIR: str | None
    VIDEO_ALLOWED_FORMATS: tuple[str, ...]
    VIDEO_MIN_DURATION: float
    VIDEO_MAX_DURATION: float
    VIDEO_MIN_WIDTH: int
    VIDEO_MIN_HEIGHT: int
    VIDEO_MAX_WIDTH: int
    VIDEO_MAX_HEIGHT: int
    VIDEO_MAX_FPS: float
    VIDEO_MAX_FRAMES: int
    VIDEO_MAX_PIXEL_RATE: float
    VIDEO_MAX_STREAMS: int
    # Fair use, per user (domain/quotas.py)
    USER_MAX_ACTIVE_VIDEOS: int
    USER_MAX_UPLOADS_PER_DAY: int
    USER_MAX_BYTES_PER_DAY: int
    VIDEO_MAX_RETRIES: int
    # The FFmpeg sandbox (media/sandbox.py)
    FFPROBE_TIMEOUT: float
    FFPROBE_MEMORY_MB: int
    FFMPEG_MEMORY_MB: int
    FFMPEG_THREADS: int  # 0: the host's cores shared among its running jobs (media.sandbox.share)
    FFMPEG_TIMEOUT_BASE: float
    FFMPEG_TIMEOUT_PER_SECOND: float
    FFMPEG_CPU_PER_SECOND: float
    MEDIA_JAIL: bool  # every ffprobe and FFmpeg in a bubblewrap jail (media/jail.py)
    # Output profile
    OUTPUT_WIDTH: int
    OUTPUT_HEIGHT: int
    OUTPUT_FPS: int
    OUTPUT_MAX_DURATION: float
    OUTPUT_CRF: int
    OUTPUT_PRESET: str
    INTRO_SECONDS: float
    OUTRO_SECONDS: float
    INTRO_IMAGE: str
    OUTRO_IMAGE: str
    WATERMARK_IMAGE: str
    # Worker
    WORKER_TMP_DIR: str | None
    TASK_MAX_RETRIES: int
    TASK_RETRY_BACKOFF_MAX: int
    TASK_SOFT_TIME_LIMIT: int
    TASK_TIME_LIMIT: int
    HEARTBEAT_SECONDS: float
    STALE_AFTER_SECONDS: int
    MAX_ATTEMPTS: int
    SHUTDOWN_GRACE_SECONDS: float
    SWEEP_AFTER_SECONDS: int
    # The backlog metric the worker group scales on (ops/metrics.py)
    METRICS_NAMESPACE: str
    WORKER_ASG_NAME: str | None
    # Leaving the group without losing a job (tasks/instance.py)
    WORKER_LIFECYCLE_HOOK: str
    EC2_METADATA_URL: str
    INSTANCE_CHECK_SECONDS: float
    # Derived from the credentials and endpoint unless set.
    CELERY_BROKER_URL: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        """Check each value's type, and what no single variable can: how settings relate."""
        for name, hint in typing.get_type_hints(Settings).items():
            if not _conforms(getattr(self, name), hint):
                raise ConfigError(f"{name} must be {hint}, got {getattr(self, name)!r}")
        if self.VIDEOPROC_ROLE not in ROLES:
            raise ConfigError(f"VIDEOPROC_ROLE must be one of {', '.join(ROLES[1:])} or empty")
        if self.APP_ENV == "production" and self.signs_tokens and (problem := secret_problem(self.SECRET_KEY)):
            raise ConfigError(f"SECRET_KEY is too weak: {problem}")
        if not self.HEARTBEAT_SECONDS * 3 <= self.STALE_AFTER_SECONDS < self.SQS_VISIBILITY_TIMEOUT:
            # A redelivered message must find its dead worker's row already stale.
            raise ConfigError("need HEARTBEAT_SECONDS * 3 <= STALE_AFTER_SECONDS < SQS_VISIBILITY_TIMEOUT")
        if self.APP_ENV == "production" and not self.MEDIA_JAIL:
            raise ConfigError("MEDIA_JAIL can't be off in production: FFmpeg parses hostile files (docs/security.md)")
        if (self.SNS_CONTROL_TOPIC_ARN is None) != (self.SNS_EVENTS_TOPIC_ARN is None):
            # kombu takes predefined topics for every fanout exchange or for none.
            raise ConfigError("set both SNS_CONTROL_TOPIC_ARN and SNS_EVENTS_TOPIC_ARN, or neither")
        if self.UPLOAD_PART_BYTES < 5 * 1024**2:
            raise ConfigError("UPLOAD_PART_BYTES must be at least 5 MiB (5242880), S3's least part size")
        if self.CELERY_BROKER_URL is None:
            url = broker_url(self.AWS_ACCESS_KEY_ID, self.AWS_SECRET_ACCESS_KEY, self.SQS_ENDPOINT_URL)
            object.__setattr__(self, "CELERY_BROKER_URL", url)

    @property
    def signs_tokens(self) -> bool:
        """Whether this process serves the API, and so needs ``SECRET_KEY`` (workers and ops never see it)."""
        return self.VIDEOPROC_ROLE in ("", "web")

    @property
    def UPLOAD_MAX_CONTENT_LENGTH(self) -> int:
        """The upload route's body limit: the file plus the title field and the multipart boundaries."""
        return self.MAX_UPLOAD_BYTES + 64 * 1024

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with ``changes``, checked again; an unknown name is a TypeError."""
        return dataclasses.replace(self, **changes)

    def as_config(self) -> dict[str, Any]:
        """Return the mapping Flask's config is made from: these settings and the extensions' fixed keys."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        # Flask's limit for every route; the upload route raises its own to UPLOAD_MAX_CONTENT_LENGTH.
        return {**FIXED_CONFIG, **values, "MAX_CONTENT_LENGTH": self.MAX_JSON_BYTES}


def _conforms(value: Any, hint: Any) -> bool:
    """Return whether ``value`` fits the field type ``hint`` (an int is a float, as in typing)."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        kind = typing.get_origin(option) or option
        if kind is tuple:
            if isinstance(value, tuple) and all(isinstance(item, str) for item in value):
                return True
        elif kind is float:
            if isinstance(value, int | float) and not isinstance(value, bool):
                return True
        elif kind is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return True
        elif isinstance(value, kind):
            return True
    return False


def check_names(env: Mapping[str, str]) -> None:
    """Raise ``ConfigError`` for a variable whose name is a near miss of a setting's (``VIDEO_MAX_DURATON``).

    A misspelt variable would otherwise be ignored and its setting left at the default.
    """
    known = {f.name for f in dataclasses.fields(Settings)} | OTHER_VARIABLES
    # AWS_* is the AWS SDK's namespace (AWS_ENDPOINT_URL_S3, AWS_MAX_ATTEMPTS…): not ours to police.
    families = {name.split("_", 1)[0] for name in known} - {"AWS"}
    for name in env:
        if name in known or name.split("_", 1)[0] not in families:
            continue
        if close := difflib.get_close_matches(name, known, n=1, cutoff=0.85):
            raise ConfigError(f"{name} is not a setting; did you mean {close[0]}?")


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Return the settings for ``APP_ENV`` (development by default)."""
    env = os.environ if env is None else env
    app_env = env_str(env, "APP_ENV", "development")
    if app_env not in ENVIRONMENTS:
        raise ConfigError(f"APP_ENV must be one of {', '.join(ENVIRONMENTS)}, got {app_env!r}")
    check_names(env)
    production = app_env == "production"
    local_default = None if production else LOCAL_AWS
    endpoint = env_str(env, "AWS_ENDPOINT_URL", local_default)
    # moto accepts any credentials; real AWS takes them from the instance role.
    fake_credential = "testing" if endpoint else None

    if production:
        _required(env, "TRUSTED_PROXIES")  # see Settings.TRUSTED_PROXIES
    queue_name = env_str(env, "SQS_QUEUE_NAME", "videoproc-videos")
    role = env_str(env, "VIDEOPROC_ROLE", "")
    if production and role in ("", "web"):
        secret_key = _required(env, "SECRET_KEY")
    else:  # a worker or ops host holds no SECRET_KEY in production
        secret_key = env_str(env, "SECRET_KEY") or ("" if production else _dev_secret_key())
    s = Settings(
        APP_ENV=app_env,
        VIDEOPROC_ROLE=role,
        SECRET_KEY=secret_key,
        JWT_EXPIRES_SECONDS=env_int(env, "JWT_EXPIRES_SECONDS", 3600),
        SQLALCHEMY_DATABASE_URI=_database_url(env, production),
        DATABASE_IAM_AUTH=env_bool(env, "DATABASE_IAM_AUTH", False),
        LOG_LEVEL=env_str(env, "LOG_LEVEL", "INFO"),
        LOG_GROUP=env_str(env, "LOG_GROUP", ""),
        METRICS_TOKEN=env_str(env, "METRICS_TOKEN", ""),
        WORKER_METRICS_PORT=env_int(env, "WORKER_METRICS_PORT", 0),
        CORS_ORIGINS=env_list(env, "CORS_ORIGINS", "" if production else LOCAL_SITE, lower=False),
        RATELIMIT_STORAGE_URI=_required(env, "RATELIMIT_STORAGE_URI")
        if production
        else env_str(env, "RATELIMIT_STORAGE_URI", "memory://"),
        RATELIMIT_ENABLED=env_bool(env, "RATELIMIT_ENABLED", True),
        RATELIMIT_KEY_PREFIX=env_str(env, "RATELIMIT_KEY_PREFIX", "videoproc"),
        LOGIN_LIMIT_PER_ADDRESS=env_str(env, "LOGIN_LIMIT_PER_ADDRESS", "30 per minute"),
        LOGIN_LIMIT_PER_ACCOUNT_ADDRESS=env_str(env, "LOGIN_LIMIT_PER_ACCOUNT_ADDRESS", "10 per 15 minutes"),
        LOGIN_DELAY_FREE_FAILURES=env_int(env, "LOGIN_DELAY_FREE_FAILURES", 5),
        LOGIN_DELAY_MAX_SECONDS=env_int(env, "LOGIN_DELAY_MAX_SECONDS", 300),
        # OWASP's scrypt (N=2^15, r=8, p=3: 32 MiB, as strong as its N=2^17, p=1 at a quarter of the memory)
        PASSWORD_HASH=env_str(env, "PASSWORD_HASH", "scrypt:32768:8:3"),
        SIGNUP_LIMIT_PER_ADDRESS=env_str(env, "SIGNUP_LIMIT_PER_ADDRESS", "10 per hour"),
        SIGNUP_LIMIT_PER_ACCOUNT=env_str(env, "SIGNUP_LIMIT_PER_ACCOUNT", "5 per hour"),
        UPLOAD_LIMIT_PER_USER=env_str(env, "UPLOAD_LIMIT_PER_USER", "10 per minute;100 per hour"),
        UPLOAD_RESUME_LIMIT_PER_USER=env_str(env, "UPLOAD_RESUME_LIMIT_PER_USER", "60 per minute;600 per hour"),
        UPLOAD_COMPLETE_LIMIT_PER_USER=env_str(env, "UPLOAD_COMPLETE_LIMIT_PER_USER", "30 per minute;300 per hour"),
        UPLOADS_PER_ADDRESS=env_int(env, "UPLOADS_PER_ADDRESS", 4),
        AWS_REGION=env_str(env, "AWS_REGION", env_str(env, "AWS_DEFAULT_REGION", "us-east-1")),
        AWS_ENDPOINT_URL=endpoint,
        S3_ENDPOINT_URL=env_str(env, "S3_ENDPOINT_URL", endpoint),
        SQS_ENDPOINT_URL=env_str(env, "SQS_ENDPOINT_URL", endpoint),
        AWS_ACCESS_KEY_ID=env_str(env, "AWS_ACCESS_KEY_ID", fake_credential),
        AWS_SECRET_ACCESS_KEY=env_str(env, "AWS_SECRET_ACCESS_KEY", fake_credential),
        S3_BUCKET=_required(env, "S3_BUCKET") if production else env_str(env, "S3_BUCKET", "videoproc-local"),
        PRESIGNED_URL_EXPIRES=env_int(env, "PRESIGNED_URL_EXPIRES", 3600),
        SQS_QUEUE_NAME=queue_name,
        SQS_QUEUE_PREFIX=env_str(env, "SQS_QUEUE_PREFIX", ""),
        SQS_QUEUE_URL=env_str(env, "SQS_QUEUE_URL"),
        SQS_VISIBILITY_TIMEOUT=env_int(env, "SQS_VISIBILITY_TIMEOUT", 120),
        SQS_DLQ_NAME=env_str(env, "SQS_DLQ_NAME", f"{queue_name}-dlq"),
        SQS_MAX_RECEIVE_COUNT=env_int(env, "SQS_MAX_RECEIVE_COUNT", 5),
        SQS_WAIT_TIME_SECONDS=env_int(env, "SQS_WAIT_TIME_SECONDS", 20),
        SQS_POLLING_INTERVAL=env_float(env, "SQS_POLLING_INTERVAL", 0),
        SNS_CONTROL_TOPIC_ARN=env_str(env, "SNS_CONTROL_TOPIC_ARN"),
        SNS_EVENTS_TOPIC_ARN=env_str(env, "SNS_EVENTS_TOPIC_ARN"),
        MAX_UPLOAD_BYTES=env_int(env, "MAX_UPLOAD_BYTES", 1024**3),
        UPLOAD_PART_BYTES=env_int(env, "UPLOAD_PART_BYTES", 8 * 1024**2),
        UPLOAD_EXPIRES_SECONDS=env_int(env, "UPLOAD_EXPIRES_SECONDS", 12 * 3600),
        IDEMPOTENCY_KEY_SECONDS=env_int(env, "IDEMPOTENCY_KEY_SECONDS", 24 * 3600),
        IDEMPOTENCY_KEYS_PER_USER=env_int(env, "IDEMPOTENCY_KEYS_PER_USER", 1000),
        QUARANTINE_DAYS=env_int(env, "QUARANTINE_DAYS", 7),
        ORPHAN_AFTER_SECONDS=env_int(env, "ORPHAN_AFTER_SECONDS", 3600),
        MAX_JSON_BYTES=env_int(env, "MAX_JSON_BYTES", 16 * 1024),
        MAX_FORM_PARTS=env_int(env, "MAX_FORM_PARTS", 4),
        MAX_FORM_MEMORY_SIZE=env_int(env, "MAX_FORM_MEMORY_SIZE", 256 * 1024),
        TRUSTED_PROXIES=env_int(env, "TRUSTED_PROXIES", 0),
        UPLOAD_TMP_DIR=env_str(env, "UPLOAD_TMP_DIR"),
        VIDEO_ALLOWED_FORMATS=env_list(env, "VIDEO_ALLOWED_FORMATS", "mp4,mov"),
        VIDEO_MIN_DURATION=env_float(env, "VIDEO_MIN_DURATION", 1),
        VIDEO_MAX_DURATION=env_float(env, "VIDEO_MAX_DURATION", 1800),
        VIDEO_MIN_WIDTH=env_int(env, "VIDEO_MIN_WIDTH", 320),
        VIDEO_MIN_HEIGHT=env_int(env, "VIDEO_MIN_HEIGHT", 240),
        VIDEO_MAX_WIDTH=env_int(env, "VIDEO_MAX_WIDTH", 7680),
        VIDEO_MAX_HEIGHT=env_int(env, "VIDEO_MAX_HEIGHT", 4320),
        VIDEO_MAX_FPS=env_float(env, "VIDEO_MAX_FPS", 240),
        VIDEO_MAX_FRAMES=env_int(env, "VIDEO_MAX_FRAMES", 216_000),
        VIDEO_MAX_PIXEL_RATE=env_float(env, "VIDEO_MAX_PIXEL_RATE", 7680 * 4320 * 30),
        VIDEO_MAX_STREAMS=env_int(env, "VIDEO_MAX_STREAMS", 16),
        USER_MAX_ACTIVE_VIDEOS=env_int(env, "USER_MAX_ACTIVE_VIDEOS", 5),
        USER_MAX_UPLOADS_PER_DAY=env_int(env, "USER_MAX_UPLOADS_PER_DAY", 50),
        USER_MAX_BYTES_PER_DAY=env_int(env, "USER_MAX_BYTES_PER_DAY", 10 * 1024**3),
        VIDEO_MAX_RETRIES=env_int(env, "VIDEO_MAX_RETRIES", 3),
        FFPROBE_TIMEOUT=env_float(env, "FFPROBE_TIMEOUT", 30),
        FFPROBE_MEMORY_MB=env_int(env, "FFPROBE_MEMORY_MB", 512),
        FFMPEG_MEMORY_MB=env_int(env, "FFMPEG_MEMORY_MB", 1536),
        FFMPEG_THREADS=env_int(env, "FFMPEG_THREADS", 0),
        FFMPEG_TIMEOUT_BASE=env_float(env, "FFMPEG_TIMEOUT_BASE", 60),
        FFMPEG_TIMEOUT_PER_SECOND=env_float(env, "FFMPEG_TIMEOUT_PER_SECOND", 10),
        FFMPEG_CPU_PER_SECOND=env_float(env, "FFMPEG_CPU_PER_SECOND", 20),
        MEDIA_JAIL=env_bool(env, "MEDIA_JAIL", True),
        OUTPUT_WIDTH=env_int(env, "OUTPUT_WIDTH", 1280),
        OUTPUT_HEIGHT=env_int(env, "OUTPUT_HEIGHT", 720),
        OUTPUT_FPS=env_int(env, "OUTPUT_FPS", 30),
        OUTPUT_MAX_DURATION=env_float(env, "OUTPUT_MAX_DURATION", 30),
        OUTPUT_CRF=env_int(env, "OUTPUT_CRF", 22),
        OUTPUT_PRESET=env_str(env, "OUTPUT_PRESET", "veryfast"),
        INTRO_SECONDS=env_float(env, "INTRO_SECONDS", 2),
        OUTRO_SECONDS=env_float(env, "OUTRO_SECONDS", 2),
        INTRO_IMAGE=env_str(env, "INTRO_IMAGE", str(ASSETS_DIR / "intro.png")),
        OUTRO_IMAGE=env_str(env, "OUTRO_IMAGE", str(ASSETS_DIR / "outro.png")),
        WATERMARK_IMAGE=env_str(env, "WATERMARK_IMAGE", str(ASSETS_DIR / "logo.png")),
        WORKER_TMP_DIR=env_str(env, "WORKER_TMP_DIR"),
        TASK_MAX_RETRIES=env_int(env, "TASK_MAX_RETRIES", 5),
        TASK_RETRY_BACKOFF_MAX=env_int(env, "TASK_RETRY_BACKOFF_MAX", 300),
        TASK_SOFT_TIME_LIMIT=env_int(env, "TASK_SOFT_TIME_LIMIT", 1500),
        TASK_TIME_LIMIT=env_int(env, "TASK_TIME_LIMIT", 1620),
        HEARTBEAT_SECONDS=env_float(env, "HEARTBEAT_SECONDS", 10),
        STALE_AFTER_SECONDS=env_int(env, "STALE_AFTER_SECONDS", 60),
        MAX_ATTEMPTS=env_int(env, "MAX_ATTEMPTS", 3),
        SHUTDOWN_GRACE_SECONDS=env_float(env, "SHUTDOWN_GRACE_SECONDS", 60),
        SWEEP_AFTER_SECONDS=env_int(env, "SWEEP_AFTER_SECONDS", 60),
        METRICS_NAMESPACE=env_str(env, "METRICS_NAMESPACE", "videoproc"),
        WORKER_ASG_NAME=env_str(env, "WORKER_ASG_NAME"),
        WORKER_LIFECYCLE_HOOK=env_str(env, "WORKER_LIFECYCLE_HOOK", "drain-worker"),
        EC2_METADATA_URL=env_str(env, "EC2_METADATA_URL", "http://169.254.169.254"),
        INSTANCE_CHECK_SECONDS=env_float(env, "INSTANCE_CHECK_SECONDS", 5),
        CELERY_BROKER_URL=env_str(env, "CELERY_BROKER_URL"),
    )
    return s
