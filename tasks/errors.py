"""Sort failures into permanent (record and stop) and transient (retry with backoff)."""

from __future__ import annotations

from boto3.exceptions import S3TransferFailedError, S3UploadFailedError
from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy.exc import DBAPIError, OperationalError

THROTTLING = {"Throttling", "ThrottlingException", "SlowDown", "RequestTimeout", "RequestLimitExceeded"}
MISSING = {"NoSuchKey", "404", "NoSuchBucket"}


class PermanentError(Exception):
    """The job can never succeed as it stands; the video is marked failed with ``code``."""

    def __init__(self, code: str, message: str, original_key: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.original_key = code, message, original_key


class HostFault(Exception):
    """FFmpeg or ffprobe ended for a reason of the host's, or one not yet known to be the file's: retry.

    ``reason`` is the runner's (``killed``, ``stopped``, ``timeout``, ``crashed``); the retry carries it, so
    that the same suspect reason on the next attempt, in a fresh process, is taken as the file's verdict.
    """

    def __init__(self, reason: str | None, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def is_transient(exc: BaseException) -> bool:
    """Return whether retrying later may succeed (network, throttling, S3 or database outage, the host's fault)."""
    if isinstance(exc, HostFault):
        return True
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error.get("Code") in THROTTLING or status >= 500 or status == 429
    if isinstance(exc, (S3UploadFailedError, S3TransferFailedError, BotoCoreError, OperationalError)):
        return True
    if isinstance(exc, DBAPIError):
        return bool(exc.connection_invalidated)
    return isinstance(exc, (ConnectionError, TimeoutError))


def is_missing(exc: BaseException) -> bool:
    """Return whether ``exc`` says an S3 object or bucket does not exist."""
    return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in MISSING


def backoff(retries: int, cap: int) -> int:
    """Return the delay before retry number ``retries + 1``: 2, 4, 8, … seconds up to ``cap``."""
    return int(min(cap, 2 ** (retries + 1)))
