"""JSON for request bodies that may be hostile: deep nesting is a 400, never a 500."""

from __future__ import annotations

from typing import Any

from flask.json.provider import DefaultJSONProvider


class SafeJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider, turning ``RecursionError`` (nesting deeper than Python's stack) into ``ValueError``.

    Flask answers a ``ValueError`` while reading a body with 400.
    """

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return super().loads(s, **kwargs)
        except RecursionError as exc:
            raise ValueError("JSON nested too deeply") from exc
