"""Domain errors: what the domain refuses, in its own words; the HTTP edge (app/api/errors.py) gives each a status."""

from __future__ import annotations

from typing import Any

from media.validate import FORMAT, MediaRejected


class DomainError(Exception):
    """A refusal the client is told of: ``code`` and ``message``, ``retry_after`` seconds when waiting helps."""

    def __init__(
        self, code: str, message: str, retry_after: int | None = None, extra: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code, self.message, self.retry_after, self.extra = code, message, retry_after, extra or {}


class Invalid(DomainError):
    """The request itself is wrong (parts missing, a blank title)."""


class NotFound(DomainError):
    """No such thing, or not the caller's."""


class Conflict(DomainError):
    """The video is not in a state that allows this (a complete after an abort, a retry of a processed video)."""


class TooLarge(DomainError):
    """Over the size limit."""


class NotAVideo(DomainError):
    """Not an allowed video: empty, another type, a container off the list."""


class OutOfBounds(DomainError):
    """A video outside the limits (duration, resolution, rates)."""


class OverLimit(DomainError):
    """Over a per-user limit; ``retry_after`` says when it frees."""


class Unavailable(DomainError):
    """A service the domain needs (S3, SQS, the sandbox) can't be used now; try again."""


def refused(exc: MediaRejected) -> DomainError:
    """Return the domain error for a video ``media.validate`` refuses."""
    kind = NotAVideo if exc.kind == FORMAT else OutOfBounds
    return kind(exc.code, exc.message)
