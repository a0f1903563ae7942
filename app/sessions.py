"""What the web processes share about sign-ins, in the rate limits' store (Redis in production).

- **Revoked tokens**: ``POST /api/auth/logout`` lists the token's ``jti`` for the rest of its
  lifetime; every authenticated request checks it.
- **Failed logins**: counted per account, and per account and client address. An address
  that failed on an account waits a delay that doubles with the account's failures
  (``LOGIN_DELAY_FREE_FAILURES`` free, then 1 s, 2 s, 4 s… up to ``LOGIN_DELAY_MAX_SECONDS``)
  after the account's last failure; an address with no failure on the account does not: an
  attacker's failures slow the attacker, never lock the owner out.
"""

from __future__ import annotations

import hashlib
import math
import time

from flask import Flask, current_app
from flask_limiter.util import get_remote_address
from limits.storage import Storage, storage_from_string

from app.extensions import get_settings

WINDOW_SECONDS = 15 * 60  # failures older than this are forgotten


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


def revoke(jti: str, expires_at: float) -> None:
    """List ``jti`` as revoked until the token would have expired (epoch seconds)."""
    remaining = max(1, math.ceil(expires_at - time.time()))
    store().incr(_key("revoked", jti), remaining)


def is_revoked(jti: str) -> bool:
    """Return whether the token ``jti`` was logged out."""
    return store().get(_key("revoked", jti)) > 0


def login_wait(email: str) -> int:
    """Return the seconds this address must still wait before trying ``email`` again (0: go on)."""
    account = _account(email)
    if store().get(_key("failed", account, get_remote_address())) == 0:
        return 0  # this address never failed on the account: the owner, say, from home
    wait_until = store().get_expiry(_key("wait", account))
    return max(0, math.ceil(wait_until - time.time())) if store().get(_key("wait", account)) else 0


def login_failed(email: str) -> None:
    """Count a failure on ``email`` from this address, and start the account's next delay."""
    settings, account = get_settings(), _account(email)
    failures = store().incr(_key("failed", account), WINDOW_SECONDS)
    store().incr(_key("failed", account, get_remote_address()), WINDOW_SECONDS)
    over = failures - settings.LOGIN_DELAY_FREE_FAILURES
    if over > 0:
        delay = min(2 ** (over - 1), settings.LOGIN_DELAY_MAX_SECONDS)
        store().clear(_key("wait", account))
        store().incr(_key("wait", account), delay)
