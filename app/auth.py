"""Bearer tokens: issue a signed JWT, and require one on a view."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import jwt
from flask import g, request

from app import sessions
from app.api.errors import APIError
from domain.extensions import db, get_settings
from domain.models import User, utcnow

ALGORITHM = "HS256"
REQUIRED_CLAIMS = ["exp", "iat", "sub", "jti"]
F = TypeVar("F", bound=Callable[..., Any])


def _key() -> str:
    key = get_settings().SECRET_KEY
    if not key:  # a worker or ops process: it never holds the key that makes or reads tokens
        raise RuntimeError("this process has no SECRET_KEY (VIDEOPROC_ROLE is not web)")
    return key


def issue_token(user: User) -> tuple[str, int]:
    """Return a signed access token for ``user`` and its lifetime in seconds."""
    lifetime = get_settings().JWT_EXPIRES_SECONDS
    now = utcnow()
    claims = {"sub": str(user.id), "iat": now, "exp": now + timedelta(seconds=lifetime), "jti": uuid.uuid4().hex}
    return jwt.encode(claims, _key(), algorithm=ALGORITHM), lifetime


def _bearer() -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" and token else None


def _claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, _key(), algorithms=[ALGORITHM], options={"require": REQUIRED_CLAIMS})


def token_subject() -> str | None:
    """Return the ``sub`` of the request's valid, not logged-out bearer token, or None (no database).

    For rate-limit keys and ``Idempotency-Key`` rows: a logged-out token is anonymous to both.
    """
    token = _bearer()
    try:
        claims = _claims(token) if token else None
    except jwt.InvalidTokenError:
        return None
    return str(claims["sub"]) if claims and not sessions.is_revoked(str(claims["jti"])) else None


def token_claims() -> dict[str, Any]:
    """Return the claims of the request's bearer token; 401 unless it is present, valid and not logged out."""
    token = _bearer()
    if token is None:
        raise APIError(401, "unauthorized", "Send 'Authorization: Bearer <token>'.")
    try:
        claims = _claims(token)
        user_id = int(claims["sub"])
    except jwt.ExpiredSignatureError as exc:
        raise APIError(401, "token_expired", "The access token has expired; log in again.") from exc
    except (jwt.InvalidTokenError, ValueError, TypeError, OverflowError) as exc:
        raise APIError(401, "invalid_token", "The access token is not valid.") from exc
    if not 0 < user_id < 2**63:
        raise APIError(401, "invalid_token", "The access token is not valid.")
    if sessions.is_revoked(str(claims["jti"])):
        raise APIError(401, "token_revoked", "This token was logged out; log in again.")
    return claims


def token_user_id() -> int:
    """Return the user id of the request's bearer token; 401 unless the token is present, valid and not revoked."""
    return int(token_claims()["sub"])


def known_user(user: User | None) -> User:
    """Return ``user``, loaded for the token's id; 401 when it no longer exists."""
    if user is None:
        raise APIError(401, "invalid_token", "The token's user no longer exists.")
    return user


def login_required(view: F) -> F:
    """Reject the request with 401 unless it carries a valid token of an existing user; set ``g.user``."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        g.user = known_user(db.session.get(User, token_user_id()))
        return view(*args, **kwargs)

    return wrapped  # type: ignore[return-value]


def token_required(view: F) -> F:
    """Reject the request with 401 unless it carries a valid token; set ``g.user_id``.

    The view loads the user in a statement of its own, and answers :func:`known_user`'s 401.
    """

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        g.user_id = token_user_id()
        return view(*args, **kwargs)

    return wrapped  # type: ignore[return-value]
