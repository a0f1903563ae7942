"""Small typed readers for environment variables."""

from __future__ import annotations

from collections.abc import Mapping
from typing import overload


class ConfigError(RuntimeError):
    """A setting is missing or malformed."""


@overload
def env_str(env: Mapping[str, str], name: str, default: str) -> str: ...
@overload
def env_str(env: Mapping[str, str], name: str, default: None = None) -> str | None: ...
def env_str(env: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    """Return the variable, or ``default`` when it is unset or empty."""
    value = env.get(name)
    return value if value not in (None, "") else default


def env_int(env: Mapping[str, str], name: str, default: int) -> int:
    """Return the variable as an int."""
    raw = env_str(env, name)
    try:
        return default if raw is None else int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc


def env_float(env: Mapping[str, str], name: str, default: float) -> float:
    """Return the variable as a float."""
    raw = env_str(env, name)
    try:
        return float(default if raw is None else raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from exc


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    """Return the variable as a bool (1/true/yes/on)."""
    raw = env_str(env, name)
    if raw is None:
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def env_list(env: Mapping[str, str], name: str, default: str, lower: bool = True) -> tuple[str, ...]:
    """Return a comma-separated variable as a tuple of items (lowercased unless ``lower`` is false)."""
    items = [item.strip() for item in env_str(env, name, default).split(",") if item.strip()]
    return tuple(item.lower() for item in items) if lower else tuple(items)
