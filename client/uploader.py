"""Send one file by the direct path: start (or resume) the upload, PUT the parts, complete.

Only the API and the presigned URLs it gives are used, over plain HTTP, so this works
against any deployment. The upload's id is remembered per file (path, size and modification
time) in a small state file, so running the same command again after a dropped connection
asks the API which parts S3 already has and sends only the others.
"""

from __future__ import annotations

import json
import mimetypes
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

PART_ATTEMPTS = 5
TIMEOUT = (10, 300)  # connect, read (a part is up to tens of MiB)
_local = threading.local()


class ClientError(Exception):
    """The API refused, or a part could not be sent after retries."""

    def __init__(self, message: str, code: str = "error", status: int = 0) -> None:
        super().__init__(message)
        self.code, self.status = code, status


@dataclass
class Api:
    """The API's base URL and the caller's bearer token."""

    url: str
    token: str | None = None
    session: requests.Session | None = None

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        self.session = self.session or requests.Session()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call the API; return the JSON answer, raise ``ClientError`` with its code on an error."""
        headers = kwargs.pop("headers", {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        assert self.session is not None
        response = self.session.request(method, f"{self.url}{path}", headers=headers, timeout=TIMEOUT, **kwargs)
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                error = {"code": "http_error", "message": response.text[:200]}
            raise ClientError(error["message"], error["code"], response.status_code)
        return response.json() if response.content else None

    def login(self, email: str, password: str) -> str:
        """Log in; keep and return the token."""
        self.token = self.call("POST", "/api/auth/login", json={"email": email, "password": password})["access_token"]
        return self.token


class State:
    """Which upload each local file is in, kept in a JSON file between runs."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @staticmethod
    def key(file: Path) -> str:
        stat = file.stat()
        return f"{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def get(self, file: Path) -> str | None:
        return self._read().get(self.key(file))

    def put(self, file: Path, upload_id: str | None) -> None:
        data = self._read()
        if upload_id is None:
            data.pop(self.key(file), None)
        else:
            data[self.key(file)] = upload_id
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.path)


def _session() -> requests.Session:
    """Return this thread's session: each thread sending parts keeps its connection to S3 open."""
    if (session := getattr(_local, "session", None)) is None:
        session = _local.session = requests.Session()
    return session


def _put_part(url: str, file: Path, offset: int, length: int, sent: Callable[[int], None]) -> str:
    """PUT one part (retried with backoff); return S3's ETag."""
    for attempt in range(PART_ATTEMPTS):
        with file.open("rb") as f:
            f.seek(offset)
            body = f.read(length)
        try:
            response = _session().put(url, data=body, timeout=TIMEOUT)
            if response.status_code == 200 and response.headers.get("ETag"):
                sent(length)
                return response.headers["ETag"]
            if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
                raise ClientError(f"S3 refused part at {offset}: HTTP {response.status_code}", "part_refused")
        except requests.RequestException:
            pass
        time.sleep(min(2**attempt, 30))
    raise ClientError(f"the part at byte {offset} could not be sent after {PART_ATTEMPTS} tries", "part_failed")


def _start(api: Api, body: dict[str, Any], attempts: int = 3) -> Any:
    """Start the upload; a request lost on the way is sent again with the same key (one video, not two)."""
    key = {"Idempotency-Key": uuid.uuid4().hex}
    for attempt in range(attempts):
        try:
            return api.call("POST", "/api/uploads", json=body, headers=dict(key))
        except requests.RequestException:
            if attempt == attempts - 1:
                raise
            time.sleep(2**attempt)
        except ClientError as exc:
            if exc.code != "request_in_progress" or attempt == attempts - 1:
                raise
            time.sleep(1)
    raise AssertionError("unreachable")


def upload(
    api: Api,
    file: Path,
    state: State,
    title: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    parallel: int = 4,
) -> dict[str, Any]:
    """Upload ``file`` (resuming the upload ``state`` remembers for it); return the API's 202 answer.

    ``progress(done, total)`` is called as bytes reach S3 (parts already there count at once).
    """
    size = file.stat().st_size
    upload_id = state.get(file)
    plan = None
    if upload_id:
        try:
            plan = api.call("GET", f"/api/uploads/{upload_id}")
        except ClientError as exc:
            if exc.status not in (404, 409):  # gone, or over: start again
                raise
    if plan is None:
        content_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        body = {"title": title or file.stem, "filename": file.name, "size": size, "content_type": content_type}
        plan = _start(api, body)
        state.put(file, plan["upload_id"])
    part_size = plan["part_size"]
    etags = {p["part_number"]: p["etag"] for p in plan["parts_done"]}
    done = [sum(p["size"] for p in plan["parts_done"])]
    lock = threading.Lock()

    def sent(n: int) -> None:
        with lock:
            done[0] += n
            if progress:
                progress(done[0], size)

    if progress:
        progress(done[0], size)
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = {
            part["part_number"]: pool.submit(
                _put_part,
                part["url"],
                file,
                (part["part_number"] - 1) * part_size,
                min(part_size, size - (part["part_number"] - 1) * part_size),
                sent,
            )
            for part in plan["parts"]
        }
        for number, future in futures.items():
            etags[number] = future.result()
    parts = [{"part_number": n, "etag": etags[n]} for n in sorted(etags)]
    answer = api.call("POST", f"/api/uploads/{plan['upload_id']}/complete", json={"parts": parts})
    state.put(file, None)
    return answer


def default_state_path() -> Path:
    """Where the state file lives: ``$XDG_STATE_HOME/videoproc/uploads.json``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "videoproc" / "uploads.json"
