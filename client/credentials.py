"""The login ``videoproc login`` keeps between runs: ``$XDG_CONFIG_HOME/videoproc/credentials.json``, mode 0600."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def default_path() -> Path:
    """``$XDG_CONFIG_HOME/videoproc/credentials.json`` (``~/.config`` by default)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "videoproc" / "credentials.json"


class Credentials:
    """The API's URL, the token and the email of the last login; readable by the user alone."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_path()

    def load(self) -> dict[str, Any] | None:
        """Return the saved login, or None."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def save(self, api: str, token: str, email: str) -> None:
        """Keep the login, replacing any: written to a 0600 file first, then renamed over the old one."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".new")
        partial.unlink(missing_ok=True)  # a file left by a crash keeps its mode under O_CREAT: never reuse it
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        os.fchmod(fd, 0o600)  # before a byte is written, whatever the umask
        with os.fdopen(fd, "w") as out:
            json.dump({"api": api, "token": token, "email": email}, out)
        partial.replace(self.path)

    def forget(self) -> None:
        """Remove the saved login."""
        self.path.unlink(missing_ok=True)
