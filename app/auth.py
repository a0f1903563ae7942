"""Bearer tokens: issue a signed JWT, and require one on a view."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import jwt
from flask import g, request

from app.api.errors import APIError
from app.extensions import db, get_settings
from app.models import User, utcnow

ALGORITHM = "HS256"
REQUIRED_CLAIMS = ["exp", "iat", "sub"]
F = TypeVar("F", bound=Callable[..., Any])


def issue_token(user: User) -> tuple[str, int]:
    """Return a signed access token for ``user`` and its lifetime in seconds."""
    lifetime = get_settings().JWT_EXPIRES_SECONDS
    now = utcnow()
    claims = {"sub": str(user.id), "iat": now, "exp": now + timedelta(seconds=lifetime)}
    return jwt.encode(claims, get_settings().SECRET_KEY, algorithm=ALGORITHM), lifetime


def token_subject() -> str | None:
    """Return the ``sub`` of the request's valid bearer token, or None (for rate-limit keys; no database)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    try:
        claims = jwt.decode(
            token, get_settings().SECRET_KEY, algorithms=[ALGORITHM], options={"require": REQUIRED_CLAIMS}
        )
    except jwt.InvalidTokenError:
        return None
    return str(claims["sub"])


def _user_from_request() -> User:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise APIError(401, "unauthorized", "Send 'Authorization: Bearer <token>'.")
    try:
        claims = jwt.decode(
            token, get_settings().SECRET_KEY, algorithms=[ALGORITHM], options={"require": REQUIRED_CLAIMS}
        )
        user_id = int(claims["sub"])
    except jwt.ExpiredSignatureError as exc:
        raise APIError(401, "token_expired", "The access token has expired; log in again.") from exc
    except (jwt.InvalidTokenError, ValueError, TypeError, OverflowError) as exc:
        raise APIError(401, "invalid_token", "The access token is not valid.") from exc
    if not 0 < user_id < 2**63:
        raise APIError(401, "invalid_token", "The access token is not valid.")
    user = db.session.get(User, user_id)
    if user is None:
        raise APIError(401, "invalid_token", "The token's user no longer exists.")
    return user


def login_required(view: F) -> F:
    """Reject the request with 401 unless it carries a valid token; set ``g.user``."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        g.user = _user_from_request()
        return view(*args, **kwargs)

    return wrapped  # type: ignore[return-value]
