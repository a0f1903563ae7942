"""What the web processes share about sign-ins, in the rate limits' store (Redis in production).

- **Revoked tokens**: ``POST /api/auth/logout`` lists the token's ``jti`` for the rest of its
  lifetime; every authenticated request checks it.
- **Failed logins**: counted per account, and per account and client address. An address
  that failed on an account waits a delay that doubles with the account's failures
  (``LOGIN_DELAY_FREE_FAILURES`` free, then 1 s, 2 s, 4 s… up to ``LOGIN_DELAY_MAX_SECONDS``)
  after the account's last failure; an address with no failure on the account does not: an
  attacker's failures slow the attacker's addresses (an IPv6 client by its /64), not another.

When the store can't be reached, each answers as if nothing were listed (logged as a
warning): logins and requests go on, as the rate limits do.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
import math
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from flask import Flask, current_app
from flask_limiter.util import get_remote_address
from limits.storage import Storage, storage_from_string

from domain.extensions import get_settings

WINDOW_SECONDS = 15 * 60  # failures older than this are forgotten
logger = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")


def init_app(app: Flask) -> None:
    """Open the store (``RATELIMIT_STORAGE_URI``: Redis in production), even where rate limits are off."""
    app.extensions["sessions"] = storage_from_string(get_settings(app).RATELIMIT_STORAGE_URI)


def store() -> Storage:
    """Return the current app's store."""
    storage: Storage = current_app.extensions["sessions"]
    return storage


def _key(*parts: str) -> str:
    return ":".join((get_settings().RATELIMIT_KEY_PREFIX, "sessions", *parts))


def _account(email: str) -> str:
    return hashlib.sha256(email.encode("utf-8", "replace")).hexdigest()[:32]  # no emails in the store


def client_network() -> str:
    """Return the client's address, an IPv6 one as its /64 (one host's whole allotment is one client)."""
    address = get_remote_address()
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    return str(ipaddress.ip_network(f"{parsed}/64", strict=False)) if parsed.version == 6 else address


def _shared(default: T) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Answer ``default``, with a warning in the log, when the store can't be reached.

    A Redis outage must not stop every login and every authenticated request; the rate limits fall back alike.
    """

    def decorate(function: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(function)
        def wrapped(*args: P.args, **kwargs: P.kwargs) -> T:
            try:
                return function(*args, **kwargs)
            except Exception as exc:  # the store's client raises its own errors (redis, its connection pool)
                logger.warning("sessions store unreachable", extra={"call": function.__name__, "error": repr(exc)})
                return default

        return wrapped

    return decorate


@_shared(None)
def revoke(jti: str, expires_at: float) -> None:
    """List ``jti`` as revoked until the token would have expired (epoch seconds)."""
    remaining = max(1, math.ceil(expires_at - time.time()))
    store().incr(_key("revoked", jti), remaining)


@_shared(False)
def is_revoked(jti: str) -> bool:
    """Return whether the token ``jti`` was logged out."""
    return store().get(_key("revoked", jti)) > 0


@_shared(0)
def login_wait(email: str) -> int:
    """Return the seconds this address must still wait before trying ``email`` again (0: go on)."""
    account = _account(email)
    if store().get(_key("failed", account, client_network())) == 0:
        return 0  # this address never failed on the account: the owner, say, from home
    if not store().get(_key("wait", account)):
        return 0
    return max(0, math.ceil(store().get_expiry(_key("wait", account)) - time.time()))


@_shared(None)
def login_failed(email: str) -> None:
    """Count a failure on ``email`` from this address, and start the account's next delay."""
    settings, account = get_settings(), _account(email)
    failures = store().incr(_key("failed", account), WINDOW_SECONDS)
    store().incr(_key("failed", account, client_network()), WINDOW_SECONDS)
    over = failures - settings.LOGIN_DELAY_FREE_FAILURES
    if over > 0:
        delay = min(2 ** (over - 1), settings.LOGIN_DELAY_MAX_SECONDS)
        store().clear(_key("wait", account))
        store().incr(_key("wait", account), delay)
