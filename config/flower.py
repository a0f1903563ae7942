"""Flower's options from the settings: where it listens and who may see it.

Flower can revoke and terminate tasks and shows every task's arguments, so production
refuses to start it without authentication: HTTP basic auth (``FLOWER_BASIC_AUTH``,
``user:password`` pairs separated by commas) or Flower's OAuth (``FLOWER_AUTH`` with
``FLOWER_AUTH_PROVIDER`` and the ``FLOWER_OAUTH2_*`` variables, read by Flower itself).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from config.env import ConfigError, env_bool, env_int, env_str


def flower_options(app_env: str, env: Mapping[str, str]) -> dict[str, Any]:
    """Return Flower's ``address``, ``port`` and ``basic_auth``; raise ``ConfigError`` for an open production Flower."""
    production = app_env == "production"
    basic = [pair.strip() for pair in (env_str(env, "FLOWER_BASIC_AUTH") or "").split(",") if pair.strip()]
    if any(":" not in pair or not pair.partition(":")[2] for pair in basic):
        raise ConfigError("FLOWER_BASIC_AUTH must be user:password pairs separated by commas")
    oauth = env_str(env, "FLOWER_AUTH")
    if production and not (basic or oauth):
        raise ConfigError("Flower needs FLOWER_BASIC_AUTH or FLOWER_AUTH (OAuth) when APP_ENV=production")
    if production and env_bool(env, "FLOWER_UNAUTHENTICATED_API", False):
        raise ConfigError("FLOWER_UNAUTHENTICATED_API must not be set when APP_ENV=production")
    options: dict[str, Any] = {
        "address": env_str(env, "FLOWER_ADDRESS", "127.0.0.1"),
        "port": env_int(env, "FLOWER_PORT", 5555),
    }
    if basic:
        options["basic_auth"] = basic
    return options
