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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from zxcvbn import zxcvbn

from config.env import ConfigError

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

# Variables read elsewhere (not settings): known to check_names, listed in the README's table.
ELSEWHERE: dict[str, tuple[str, str]] = {
    "PROMETHEUS_MULTIPROC_DIR": (
        "unset (one process); the web unit and `make run` set it",
        "prometheus_client's multi-process directory: gunicorn's workers write there and `/metrics` adds them up"
        " (`deploy/gunicorn_conf.py` empties it at start); a worker makes a fresh one itself",
    ),
    "FLOWER_ADDRESS": ("`127.0.0.1`", "where Flower listens (`config/flower.py`)"),
    "FLOWER_PORT": ("`5555`", ""),
    "FLOWER_BASIC_AUTH": ("unset; production needs it or `FLOWER_AUTH`", "`user:password` pairs, comma-separated"),
    "WORKER_CONCURRENCY": (
        "`1` (Procfile), the instance's cores + 1 (EC2)",
        "worker pool processes: one FFmpeg each; one more than cores drains a backlog fastest (docs/benchmarks.md)",
    ),
    "SECRET_KEY_ARN": (
        "unset",
        "on an instance: the Secrets Manager secret of the web's `SECRET_KEY` (`deploy/envfile.py`)",
    ),
    "DATABASE_SECRET_ARN": ("unset", "on an instance: RDS's master secret, for the migration unit only"),
    "DATABASE_ADMIN_SECRET_ARN": ("unset", ""),
    "LOG_GROUP_PREFIX": ("unset", "on an instance: `/<stack>`, made the role's own `LOG_GROUP`"),
}

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


def broker_url(key: str | None, secret: str | None, endpoint: str | None) -> str:
    """Return the kombu SQS URL: credentials and endpoint only when they are set."""
    auth = f"{quote(key, safe='')}:{quote(secret, safe='')}@" if key and secret else ""
    host = urlsplit(endpoint).netloc if endpoint else ""
    return f"sqs://{auth}{host}"


class _Required:
    """Production's rule for a setting that has no default there."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
SAME: Any = object()  # production takes the development default
Values = Mapping[str, Any]  # the settings read so far, for a default computed from them


@dataclass(frozen=True)
class Declared:
    """One setting's declaration: what the reader, the checks and the README's table are made from.

    ``default`` and ``production`` are values, or functions of the settings declared before
    (``production`` may also be ``REQUIRED``, or ``SAME`` for the default). An empty ``help``
    puts the setting on the row of the one above it in the README's table.
    """

    default: Any
    help: str
    production: Any = SAME
    shown: str | None = None  # the table's default when the value alone doesn't say it
    shown_production: str | None = None
    variable: str | None = None  # the environment variable, when not the setting's name
    fallback: str | None = None  # a variable read when ``variable`` is unset
    choices: tuple[str, ...] = ()
    lower: bool = True  # a list's items lowercased
    clean: Callable[[Any], Any] | None = None

    def value(self, production: bool, values: Values) -> Any:
        """Return the value when the variable is unset."""
        rule = self.production if production and self.production is not SAME else self.default
        if rule is REQUIRED:
            raise ConfigError(f"{self.variable} must be set when APP_ENV=production")
        return rule(values) if callable(rule) else rule


def setting(default: Any, help: str, *, secret: bool = False, **rules: Any) -> Any:
    """Declare a setting: its default, what it does (the README's table) and its rules (``Declared``)."""
    return field(repr=not secret, metadata={"declared": Declared(default, help, **rules)})


def _required_on_the_web(values: Values) -> str:
    """``SECRET_KEY`` in production: the web's; a worker or ops host holds none."""
    if values["VIDEOPROC_ROLE"] in ("", "web"):
        raise ConfigError("SECRET_KEY must be set when APP_ENV=production")
    return ""


def _local_database() -> str:
    INSTANCE_DIR.mkdir(exist_ok=True)
    return f"sqlite:///{INSTANCE_DIR / 'videoproc.db'}"


def _postgresql(url: str) -> str:
    """Heroku-style ``postgres://`` URLs name the dialect SQLAlchemy calls ``postgresql``."""
    return "postgresql://" + url[len("postgres://") :] if url.startswith("postgres://") else url


def _fake_credential(values: Values) -> str | None:
    """moto accepts any credentials; real AWS takes them from the instance role."""
    return "testing" if values["AWS_ENDPOINT_URL"] else None


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
    """Every setting, declared once: type, default, production's rule and what it does.

    ``load_settings`` reads them from the environment, ``python -m config.table`` writes the
    README's table from them, and the stack's queue attributes come from their defaults.
    Reading a name that is not here is an AttributeError (and a type error in ``make lint``),
    ``replace`` with one is a TypeError, and a variable in the environment that is one letter
    off a setting's name stops the process at start (``check_names``).
    """

    APP_ENV: str = setting("development", "`development`, `testing` or `production`", choices=ENVIRONMENTS)
    # web | worker | ops on an instance (the bootstrap's VIDEOPROC_ROLE); empty: every role (local)
    VIDEOPROC_ROLE: str = setting(
        "",
        "`web`, `worker` or `ops`: the instance's role, written by the bootstrap; only `web` (or empty) needs "
        "`SECRET_KEY`",
        shown="empty (every role, as `make run`)",
        choices=ROLES,
    )
    SECRET_KEY: str = setting(
        lambda _: _dev_secret_key(),
        "signs the JWTs; strength-checked in production on the web (a worker or ops instance never holds it)",
        shown="random, kept in `instance/dev-secret-key`",
        production=_required_on_the_web,
        shown_production="required on the web",
        secret=True,
    )
    JWT_EXPIRES_SECONDS: int = setting(3600, "access token lifetime")
    SQLALCHEMY_DATABASE_URI: str = setting(
        lambda _: _local_database(),
        "SQLAlchemy URL; PostgreSQL in production (`postgresql://user:pass@host/db`, psycopg 3); on the stack each"
        " role's own user, `videoproc_<role>`, with no password",
        shown="`sqlite:///instance/videoproc.db`",
        production=REQUIRED,
        variable="DATABASE_URL",
        clean=_postgresql,
        secret=True,
    )
    # Connect with a fresh RDS IAM token as the URL's user (no password to rotate or leak)
    DATABASE_IAM_AUTH: bool = setting(
        False,
        "log every new connection in with a fresh RDS IAM token for the URL's user (`domain/database.py`); the "
        "stack sets it",
    )
    LOG_LEVEL: str = setting("INFO", "log level")
    LOG_GROUP: str = setting(
        "",
        "a CloudWatch Logs group that also receives every record (watchtower, batched every 10 s, one stream "
        "per process); the stack sets `/<stack>/<role>`",
        shown="empty (stderr only)",
    )
    METRICS_TOKEN: str = setting(
        "", "the bearer token `GET /metrics` requires; production serves no metrics without one", secret=True
    )
    WORKER_METRICS_PORT: int = setting(
        0,
        "the port where a worker serves its own Prometheus metrics (main process and pool)",
        shown="`0` (none; `make run` and the unit: `9808`)",
    )
    # Accounts and abuse
    CORS_ORIGINS: tuple[str, ...] = setting(
        tuple(LOCAL_SITE.split(",")),
        "origins allowed to call `/api/*` from a browser and to PUT parts to the bucket (its CORS rule, set by"
        " `flask aws init`; the stack's `CorsOrigins` parameter), comma-separated",
        production=(),
        lower=False,
    )
    RATELIMIT_STORAGE_URI: str = setting(
        "memory://",
        "where rate-limit counters live: `redis://host:6379/0` so every web process shares them",
        production=REQUIRED,
        secret=True,
    )
    RATELIMIT_ENABLED: bool = setting(True, "turn the rate limits off (a load test against a private stack)")
    RATELIMIT_KEY_PREFIX: str = setting(
        "videoproc", "the prefix of the counters' keys in Redis (several stacks, one Redis)"
    )
    LOGIN_LIMIT_PER_ADDRESS: str = setting(
        "30 per minute",
        "login attempts per client address; refused logins per account from one address (another address is "
        "never held back)",
    )
    LOGIN_LIMIT_PER_ACCOUNT_ADDRESS: str = setting("10 per 15 minutes", "")
    LOGIN_DELAY_FREE_FAILURES: int = setting(
        5,
        "an address that failed on an account waits, after the account's last failure, 1 s, 2 s, 4 s… (at most "
        "the maximum) once the account has more failures than the free ones in 15 minutes (`app/sessions.py`)",
    )
    LOGIN_DELAY_MAX_SECONDS: int = setting(300, "")
    PASSWORD_HASH: str = setting(
        "scrypt:32768:8:3",
        "werkzeug's method for new password hashes (OWASP's scrypt: N=2^15, r=8, p=3); a hash made otherwise is"
        " redone at the owner's next login",
    )
    SIGNUP_LIMIT_PER_ADDRESS: str = setting("10 per hour", "sign-ups per client address and per email")
    SIGNUP_LIMIT_PER_ACCOUNT: str = setting("5 per hour", "")
    # Every upload attempt counts, refused or not: each costs a probe.
    UPLOAD_LIMIT_PER_USER: str = setting(
        "10 per minute;100 per hour", "upload attempts per user, refused ones included"
    )
    UPLOAD_RESUME_LIMIT_PER_USER: str = setting(
        "60 per minute;600 per hour",
        "`GET /api/uploads/{id}` (resume: an S3 ListParts and a presigned URL per part) per user",
    )
    UPLOAD_COMPLETE_LIMIT_PER_USER: str = setting(
        "30 per minute;300 per hour", "`POST /api/uploads/{id}/complete` per user, refused ones included"
    )
    # Uploads one client address may have in flight through nginx (deploy/nginx.conf.template).
    UPLOADS_PER_ADDRESS: int = setting(4, "uploads in flight per client address, enforced by nginx")
    # AWS
    AWS_REGION: str = setting("us-east-1", "region of the bucket and queue", fallback="AWS_DEFAULT_REGION")
    AWS_ENDPOINT_URL: str | None = setting(LOCAL_AWS, "one endpoint for S3 and SQS (moto's locally)", production=None)
    S3_ENDPOINT_URL: str | None = setting(
        lambda v: v["AWS_ENDPOINT_URL"],
        "per-service endpoints (VPC endpoints; the tests use them to cut one service off)",
        shown="`AWS_ENDPOINT_URL`",
    )
    SQS_ENDPOINT_URL: str | None = setting(lambda v: v["AWS_ENDPOINT_URL"], "", shown="`AWS_ENDPOINT_URL`")
    AWS_ACCESS_KEY_ID: str | None = setting(
        _fake_credential,
        "unset on EC2: the instance role's credentials are used",
        shown="`testing` when an endpoint is set; else unset",
    )
    AWS_SECRET_ACCESS_KEY: str | None = setting(
        _fake_credential, "", shown="`testing` when an endpoint is set; else unset", secret=True
    )
    S3_BUCKET: str = setting("videoproc-local", "bucket for originals and outputs", production=REQUIRED)
    PRESIGNED_URL_EXPIRES: int = setting(3600, "lifetime of the URLs in API answers")
    SQS_QUEUE_NAME: str = setting("videoproc-videos", "the work queue")
    SQS_QUEUE_PREFIX: str = setting("", "prepended to the queue name (one account, several stacks)")
    SQS_QUEUE_URL: str | None = setting(
        None, "the work queue's URL (the stack sets it): the API and the sweeper use it without looking the queue up"
    )
    # Short: the worker keeps extending the messages it holds, so a dead worker's job
    # comes back within this many seconds while a live job of any length never does.
    SQS_VISIBILITY_TIMEOUT: int = setting(
        120,
        "seconds a received message stays hidden; the worker extends it while the job runs, so this is how soon"
        " a dead worker's job comes back",
    )
    SQS_DLQ_NAME: str = setting(
        lambda v: f"{v['SQS_QUEUE_NAME']}-dlq", "the dead-letter queue", shown="`<SQS_QUEUE_NAME>-dlq`"
    )
    SQS_MAX_RECEIVE_COUNT: int = setting(5, "receives before SQS moves a message to the dead-letter queue")
    SQS_RETENTION_SECONDS: int = setting(
        14 * 24 * 3600,
        "how long both queues keep a message (SQS's maximum, 14 days: an outage of days loses nothing)",
        shown="`1209600` (14 days)",
    )
    SQS_WAIT_TIME_SECONDS: int = setting(20, "long polling")
    SQS_POLLING_INTERVAL: float = setting(0.0, "extra wait after an empty poll")
    # The stack's SNS topics for remote control and events; unset: kombu creates its own.
    SNS_CONTROL_TOPIC_ARN: str | None = setting(
        None,
        "the SNS topics of remote control and of Celery's events; set both (the stack does) and no process "
        "calls `CreateTopic`",
        shown="unset (kombu creates `<prefix>celery-pidbox` and `<prefix>celeryev`)",
    )
    SNS_EVENTS_TOPIC_ARN: str | None = setting(None, "")
    # Upload validation
    MAX_UPLOAD_BYTES: int = setting(1024**3, "larger uploads get 413", shown="`1073741824` (1 GiB)")
    # Direct uploads (domain/direct.py)
    UPLOAD_PART_BYTES: int = setting(
        8 * 1024**2,
        "a direct upload's part size (at least 5 MiB; larger for files over 1 000 parts)",
        shown="`8388608` (8 MiB)",
    )
    UPLOAD_EXPIRES_SECONDS: int = setting(
        12 * 3600, "an unfinished direct upload is aborted after this", shown="`43200` (12 h)"
    )
    IDEMPOTENCY_KEY_SECONDS: int = setting(24 * 3600, "how long an `Idempotency-Key`'s answer is kept")
    IDEMPOTENCY_KEYS_PER_USER: int = setting(
        1000,
        "keys a user may hold at once (kept `IDEMPOTENCY_KEY_SECONDS`); past it, 429 "
        "`too_many_idempotency_keys`. A key is stored only for a request on the user's own upload",
    )
    # Refused originals are kept under quarantine/ this long (the bucket's lifecycle rule), never deleted in line.
    QUARANTINE_DAYS: int = setting(
        7,
        "how long an original the checks refused stays under `quarantine/` before the bucket's lifecycle rule "
        "deletes it (`flask aws init`; the stack's `QuarantineDays`)",
    )
    # An S3 original with no row, or a multipart upload with none, older than this is removed by the sweeper.
    ORPHAN_AFTER_SECONDS: int = setting(
        3600, "the sweeper deletes an original with no row, and aborts a multipart upload with no row, older than this"
    )
    # Every body but an upload's is small: JSON routes read at most this many bytes.
    MAX_JSON_BYTES: int = setting(16 * 1024, "the body limit of every route but the upload")
    MAX_FORM_PARTS: int = setting(4, "multipart parts per request; bytes of text fields held in memory")
    # Text fields are parsed in memory; werkzeug reads in 64 KiB chunks, so this must be larger.
    MAX_FORM_MEMORY_SIZE: int = setting(256 * 1024, "")
    # Proxies in front of gunicorn whose X-Forwarded-For is trusted (nginx: 1; ALB and nginx: 2).
    # Required in production: guessing it wrong either lets clients forge their address or gives all one address.
    TRUSTED_PROXIES: int = setting(
        0,
        "proxies whose `X-Forwarded-For`/`-Proto` are believed: nginx alone 1, a load balancer and nginx 2",
        shown="`0` (`1` in the Procfile)",
        production=REQUIRED,
    )
    UPLOAD_TMP_DIR: str | None = setting(
        None,
        "where uploads are spooled while they are probed; one per host (stale files are recognised by process id)",
        shown="system temp",
    )
    VIDEO_ALLOWED_FORMATS: tuple[str, ...] = setting(
        ("mp4", "mov"), "accepted containers (by content: `mp4`, `mov`, `mkv`, `avi`, …)"
    )
    VIDEO_MIN_DURATION: float = setting(1.0, "accepted duration, seconds")
    VIDEO_MAX_DURATION: float = setting(1800.0, "")
    VIDEO_MIN_WIDTH: int = setting(320, "smallest accepted size")
    VIDEO_MIN_HEIGHT: int = setting(240, "")
    VIDEO_MAX_WIDTH: int = setting(7680, "largest accepted size; their product bounds every decoded picture")
    VIDEO_MAX_HEIGHT: int = setting(4320, "")
    VIDEO_MAX_FPS: float = setting(240.0, "frame rate and frame count an upload may declare")
    VIDEO_MAX_FRAMES: int = setting(216_000, "")
    VIDEO_MAX_PIXEL_RATE: float = setting(995328000.0, "width × height × fps", shown="`995328000` (8K at 30 fps)")
    VIDEO_MAX_STREAMS: int = setting(16, "streams in one file")
    # Fair use, per user (domain/quotas.py)
    USER_MAX_ACTIVE_VIDEOS: int = setting(5, "a user's videos waiting or processing")
    USER_MAX_UPLOADS_PER_DAY: int = setting(50, "a user's uploads and bytes in the last 24 hours")
    USER_MAX_BYTES_PER_DAY: int = setting(10 * 1024**3, "")
    VIDEO_MAX_RETRIES: int = setting(3, "owner retries of one failed video")
    # Webhooks (domain/webhooks.py, tasks/webhooks.py)
    WEBHOOK_QUEUE_NAME: str = setting(
        lambda v: f"{v['SQS_QUEUE_NAME']}-webhooks",
        "the deliveries' queue, read by the webhook workers only (`celery -A tasks worker -Q <it> -P threads`)",
        shown="`<SQS_QUEUE_NAME>-webhooks`",
    )
    WEBHOOK_MAX_ENDPOINTS: int = setting(10, "webhook endpoints per user")
    WEBHOOK_TIMEOUT_SECONDS: float = setting(10.0, "a receiver must answer 2xx within this to acknowledge")
    WEBHOOK_RETRY_SECONDS: float = setting(10.0, "the first retry's delay; each next one doubles, up to an hour")
    WEBHOOK_RETRY_FOR_SECONDS: int = setting(
        24 * 3600, "retries stop this long after the event: the delivery is `failed`", shown="`86400` (24 h)"
    )
    WEBHOOK_DISABLE_AFTER: int = setting(3, "deliveries failed in a row that disable an endpoint")
    WEBHOOK_ALLOW_LOCAL: bool = setting(
        True,
        "also allow `http://` URLs and loopback addresses (try webhooks with a local receiver); never private, "
        "link-local or metadata addresses",
        production=False,
        shown_production="`false` only",
    )
    WEBHOOK_KEEP_DAYS: int = setting(30, "the sweeper deletes events and their deliveries older than this")
    # The FFmpeg sandbox (media/sandbox.py)
    FFPROBE_TIMEOUT: float = setting(30.0, "ffprobe's wall and CPU seconds, and address space")
    FFPROBE_MEMORY_MB: int = setting(512, "")
    FFMPEG_MEMORY_MB: int = setting(1536, "each ffmpeg child's address space")
    FFMPEG_THREADS: int = setting(
        0,
        "filter threads per FFmpeg; the decoder gets one more (when above 1) and x264 1.5 × that (their own "
        "default ratios). Unset, a lone job gets every core and a backlog one thread per FFmpeg "
        "(docs/benchmarks.md)",
        shown="unset: the host's cores ÷ the jobs running when an encode starts (at least 1, at most 16)",
    )  # 0: the host's cores shared among its running jobs (media.sandbox.share)
    FFMPEG_TIMEOUT_BASE: float = setting(60.0, "an encode's wall limit: base + per second of content")
    FFMPEG_TIMEOUT_PER_SECOND: float = setting(10.0, "")
    FFMPEG_CPU_PER_SECOND: float = setting(20.0, "an encode's CPU-time limit: base + this per second of content")
    MEDIA_JAIL: bool = setting(
        True,
        "run every ffprobe and FFmpeg in a bubblewrap jail: no network, no secrets, only its scratch directory "
        "writable (`media/jail.py`, docs/security.md). `false` only where the host allows no user namespaces",
        shown_production="`true` only",
    )  # every ffprobe and FFmpeg in a bubblewrap jail (media/jail.py)
    # Output profile
    OUTPUT_WIDTH: int = setting(1280, "output frame (even sizes) and rate")
    OUTPUT_HEIGHT: int = setting(720, "")
    OUTPUT_FPS: int = setting(30, "")
    OUTPUT_MAX_DURATION: float = setting(30.0, "seconds of the clip kept")
    OUTPUT_CRF: int = setting(22, "x264 quality and speed (chosen by measurement: docs/benchmarks.md)")
    OUTPUT_PRESET: str = setting("veryfast", "")
    # The optimize stage (tasks/optimize.py): once published, smaller renditions at the same quality
    OPTIMIZE: str = setting(
        "h264+av1",
        "after publishing, re-encode in the background: `off`, `h264` (a slower x264 preset) or `h264+av1` "
        "(and an AV1 rendition), each at the CRF whose SSIM matches the published one's (docs/deploy-aws.md)",
        choices=("off", "h264", "h264+av1"),
    )
    OPTIMIZE_QUEUE_NAME: str = setting(
        lambda v: f"{v['SQS_QUEUE_NAME']}-optimize",
        "the optimize stage's queue, read by the optimize workers only (`celery -A tasks worker -Q <it>`, at idle "
        "CPU priority beside the video workers)",
        shown="`<SQS_QUEUE_NAME>-optimize`",
    )
    OPTIMIZE_H264_PRESET: str = setting("slow", "x264's preset for the optimized H.264 rendition")
    OPTIMIZE_AV1_PRESET: int = setting(8, "SVT-AV1's preset for the AV1 rendition (0 slowest … 13 fastest)")
    OPTIMIZE_PROBE_SECONDS: float = setting(
        3.0, "seconds of the clip (4 pieces) encoded to find each rendition's CRF: its SSIM ≥ the published one's"
    )
    INTRO_SECONDS: float = setting(2.0, "bumper lengths (together ≤ 5; 0 drops one)")
    OUTRO_SECONDS: float = setting(2.0, "")
    INTRO_IMAGE: str = setting(
        str(ASSETS_DIR / "intro.png"),
        "branding; empty `WATERMARK_IMAGE` drops the watermark",
        shown="`assets/intro.png`, `assets/outro.png`, `assets/logo.png`",
    )
    OUTRO_IMAGE: str = setting(str(ASSETS_DIR / "outro.png"), "")
    WATERMARK_IMAGE: str = setting(str(ASSETS_DIR / "logo.png"), "")
    # Worker
    WORKER_TMP_DIR: str | None = setting(None, "per-job scratch directories and the bumper cache", shown="system temp")
    TASK_MAX_RETRIES: int = setting(5, "transient-error retries and the longest backoff")
    TASK_RETRY_BACKOFF_MAX: int = setting(300, "")
    TASK_SOFT_TIME_LIMIT: int = setting(
        1500, "a job over the soft limit is `failed` `timed_out`; the hard limit kills the process"
    )
    TASK_TIME_LIMIT: int = setting(1620, "")
    HEARTBEAT_SECONDS: float = setting(10.0, "how often a running job marks its row alive")
    STALE_AFTER_SECONDS: int = setting(
        60,
        "a `processing` row without a heartbeat for this long is claimed again (needs `3 × HEARTBEAT_SECONDS ≤ "
        "STALE_AFTER_SECONDS < SQS_VISIBILITY_TIMEOUT`)",
    )
    MAX_ATTEMPTS: int = setting(
        3, "deliveries (not retries) before a job that keeps killing its worker is `failed` `worker_lost`"
    )
    SHUTDOWN_GRACE_SECONDS: float = setting(
        60.0, "on SIGTERM, how long running jobs may go on before they are handed to another worker"
    )
    SWEEP_AFTER_SECONDS: int = setting(60, "`flask videos sweep` re-enqueues `uploaded` rows older than this")
    # The backlog metric the worker group scales on (ops/metrics.py)
    METRICS_NAMESPACE: str = setting(
        "videoproc",
        "where `flask aws metrics` puts `BacklogPerInstance` and friends; the worker group it divides by "
        "(unset: one local worker)",
    )
    WORKER_ASG_NAME: str | None = setting(None, "")
    # Leaving the group without losing a job (tasks/instance.py)
    WORKER_LIFECYCLE_HOOK: str = setting(
        "drain-worker", "scale-in protection and Spot notices on EC2 (docs/deploy-aws.md)"
    )
    EC2_METADATA_URL: str = setting("http://169.254.169.254", "")
    INSTANCE_CHECK_SECONDS: float = setting(5.0, "")
    # Derived from the credentials and endpoint unless set.
    CELERY_BROKER_URL: str | None = setting(
        None, "override the broker URL", shown="built from the above (`sqs://…`)", secret=True
    )

    def __post_init__(self) -> None:
        """Check each value's type, and what no single variable can: how settings relate."""
        for name, hint in typing.get_type_hints(Settings).items():
            if not _conforms(getattr(self, name), hint):
                raise ConfigError(f"{name} must be {hint}, got {getattr(self, name)!r}")
        for f in dataclasses.fields(self):
            if (choices := declared(f.name).choices) and getattr(self, f.name) not in choices:
                raise ConfigError(f"{f.name} must be one of {', '.join(repr(c) for c in choices)}")
        if self.APP_ENV == "production" and self.signs_tokens and (problem := secret_problem(self.SECRET_KEY)):
            raise ConfigError(f"SECRET_KEY is too weak: {problem}")
        if not self.HEARTBEAT_SECONDS * 3 <= self.STALE_AFTER_SECONDS < self.SQS_VISIBILITY_TIMEOUT:
            # A redelivered message must find its dead worker's row already stale.
            raise ConfigError("need HEARTBEAT_SECONDS * 3 <= STALE_AFTER_SECONDS < SQS_VISIBILITY_TIMEOUT")
        if self.APP_ENV == "production" and not self.MEDIA_JAIL:
            raise ConfigError("MEDIA_JAIL can't be off in production: FFmpeg parses hostile files (docs/security.md)")
        if self.APP_ENV == "production" and self.WEBHOOK_ALLOW_LOCAL:
            raise ConfigError("WEBHOOK_ALLOW_LOCAL can't be on in production: webhooks go to https:// hosts only")
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
    known = set(variables()) | set(ELSEWHERE)
    # AWS_* is the AWS SDK's namespace (AWS_ENDPOINT_URL_S3, AWS_MAX_ATTEMPTS…): not ours to police.
    families = {name.split("_", 1)[0] for name in known} - {"AWS"}
    for name in env:
        if name in known or name.split("_", 1)[0] not in families:
            continue
        if close := difflib.get_close_matches(name, known, n=1, cutoff=0.85):
            raise ConfigError(f"{name} is not a setting; did you mean {close[0]}?")


def declared(name: str) -> Declared:
    """Return the declaration of setting ``name``."""
    return _DECLARED[name]


def variables() -> dict[str, str]:
    """Return every environment variable a setting reads, with the setting it sets."""
    found = {}
    for name, d in _DECLARED.items():
        found[d.variable or name] = name
        if d.fallback:
            found[d.fallback] = name
    return found


def _parse(raw: str, hint: Any, variable: str, d: Declared) -> Any:
    if isinstance(hint, types.UnionType):  # ``str | None``: the type that is not None
        hint = next(t for t in typing.get_args(hint) if t is not type(None))
    kind = typing.get_origin(hint) or hint
    if kind is bool:
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    if kind is tuple:
        items = [item.strip() for item in raw.split(",") if item.strip()]
        return tuple(item.lower() for item in items) if d.lower else tuple(items)
    if kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            raise ConfigError(
                f"{variable} must be {'an integer' if kind is int else 'a number'}, got {raw!r}"
            ) from None
    return raw


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Return the settings the environment ``env`` (``os.environ`` by default) gives."""
    env = os.environ if env is None else env
    check_names(env)
    hints = typing.get_type_hints(Settings)
    values: dict[str, Any] = {}
    for name, d in _DECLARED.items():
        variable = d.variable or name
        raw = env.get(variable) or (env.get(d.fallback) if d.fallback else None)
        value = _parse(raw, hints[name], variable, d) if raw else d.value(values.get("APP_ENV") == "production", values)
        if d.choices and value not in d.choices:
            raise ConfigError(f"{variable} must be one of {', '.join(repr(c) for c in d.choices)}, got {value!r}")
        values[name] = d.clean(value) if d.clean and value is not None else value
    return Settings(**values)


_DECLARED: dict[str, Declared] = {f.name: f.metadata["declared"] for f in dataclasses.fields(Settings)}
for _name, _d in _DECLARED.items():  # the variable each reads, named in its messages
    object.__setattr__(_d, "variable", _d.variable or _name)
