"""Rate limits on the account routes, per client address and per account (Flask-Limiter).

Counters live in ``RATELIMIT_STORAGE_URI``: Redis in production, so every web process
shares them; memory by default. A breach answers 429 with ``Retry-After``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from flask import Response, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from domain.extensions import get_settings

limiter = Limiter(key_func=get_remote_address)


def account_key() -> str:
    """Return the limit key of the account a JSON body names (a hash: no emails in the store)."""
    body = request.get_json(silent=True)
    email = str(body.get("email", "")).strip().lower() if isinstance(body, dict) else ""
    return "account:" + hashlib.sha256(email.encode("utf-8", "replace")).hexdigest()[:32]


def user_key() -> str:
    """Return the limit key of the token's user; anonymous requests share their address's key."""
    from app.auth import token_subject

    subject = token_subject()
    return f"user:{subject}" if subject else f"anonymous:{get_remote_address()}"


def setting(name: str) -> Callable[[], str]:
    """Return a callable that reads the limit string ``name`` from the app's settings."""
    return lambda: getattr(get_settings(), name)


def failed(response: Response) -> bool:
    """Count only refused attempts against an account: its owner logging in is not an attack."""
    return response.status_code >= 400


def per_address(name: str) -> Any:
    """Limit a route by client address, by the setting ``name``."""
    return limiter.limit(setting(name), key_func=get_remote_address, scope=f"{name}:address")


def per_account(name: str) -> Any:
    """Limit a route's refused attempts per account named in the body, by the setting ``name``."""
    return limiter.limit(setting(name), key_func=account_key, deduct_when=failed, scope=f"{name}:account")


def account_address_key() -> str:
    """Return the limit key of the account a JSON body names, from this client's network (an IPv6 /64)."""
    from app.sessions import client_network

    return f"{account_key()}:{client_network()}"


def per_account_address(name: str) -> Any:
    """Limit a route's refused attempts per account and client address: another address is not held back."""
    return limiter.limit(
        setting(name), key_func=account_address_key, deduct_when=failed, scope=f"{name}:account-address"
    )


def per_user(name: str) -> Any:
    """Limit every attempt at a route per signed-in user, by the setting ``name``."""
    return limiter.limit(setting(name), key_func=user_key, scope=f"{name}:user")
