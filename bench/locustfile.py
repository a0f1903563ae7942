"""Locust users for ``bench.load``: uploads by the direct path and by the form, and status polling.

Run by ``bench.load`` (``locust -f bench/locustfile.py <User> --headless ...``), which starts
the stack and passes, in the environment, ``BENCH_ACCOUNTS`` (a JSON file of
``[{"token", "video_id"}]``: signed-in users, each with one video to poll) and ``BENCH_CLIP``
(the clip to upload). Only locust is imported here: locust patches the process with gevent.

Each upload is timed as a whole too (request type ``FLOW``), then deleted through the API
(not timed as an upload: it keeps moto's memory flat over a minute of uploads).
"""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

from locust import FastHttpUser, HttpUser, constant, constant_throughput, events, task

ACCOUNTS: list[dict[str, str]] = json.loads(Path(os.environ["BENCH_ACCOUNTS"]).read_text())
CLIP = Path(os.environ["BENCH_CLIP"])
DATA = CLIP.read_bytes()
_accounts = itertools.cycle(ACCOUNTS)


def sign_in() -> tuple[dict[str, str], str]:
    """Return the next account's headers and video (the accounts are shared round-robin)."""
    account = next(_accounts)
    return {"Authorization": f"Bearer {account['token']}"}, account["video_id"]


class Client(HttpUser):
    """A signed-in user."""

    abstract = True

    def on_start(self) -> None:
        self.headers, self.video_id = sign_in()

    def flow(self, name: str, started: float, error: str | None) -> None:
        """Report a whole upload as one request of type FLOW."""
        events.request.fire(
            request_type="FLOW",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=len(DATA),
            exception=RuntimeError(error) if error else None,
            context={},
        )

    def expect(self, answer: Any, status: int) -> str | None:
        """Mark ``answer`` failed unless it has ``status``; return the failure."""
        if answer.status_code == status:
            answer.success()
            return None
        error = f"{answer.status_code}: {answer.text[:200]}"
        answer.failure(error)
        return error

    def clean_up(self, video_id: str) -> None:
        self.client.delete(f"/api/videos/{video_id}", headers=self.headers, name="DELETE (cleanup)")


class DirectUploader(Client):
    """Uploads the clip by the direct path, one after another: start, PUT the part to S3, complete."""

    wait_time = constant(0)

    @task
    def upload(self) -> None:
        started = time.perf_counter()
        body = {"title": "load", "filename": CLIP.name, "size": len(DATA), "content_type": "video/mp4"}
        with self.client.post(
            "/api/uploads", json=body, headers=self.headers, name="POST /api/uploads", catch_response=True
        ) as plan:
            if error := self.expect(plan, 201):
                return self.flow("direct upload", started, error)
        plan_body = plan.json()
        with self.client.put(plan_body["parts"][0]["url"], data=DATA, name="PUT part (S3)", catch_response=True) as put:
            if error := self.expect(put, 200):
                return self.flow("direct upload", started, error)
        parts = {"parts": [{"part_number": 1, "etag": put.headers["ETag"]}]}
        with self.client.post(
            f"/api/uploads/{plan_body['upload_id']}/complete",
            json=parts,
            headers=self.headers,
            name="POST /api/uploads/{id}/complete",
            catch_response=True,
        ) as done:
            error = self.expect(done, 202)
        self.flow("direct upload", started, error)
        self.clean_up(plan_body["video_id"])
        return None


class FormUploader(Client):
    """Uploads the clip through the API's form route, one after another."""

    wait_time = constant(0)

    @task
    def upload(self) -> None:
        started = time.perf_counter()
        with self.client.post(
            "/api/videos/upload",
            files={"video_file": (CLIP.name, DATA, "video/mp4")},
            data={"title": "load"},
            headers=self.headers,
            name="POST /api/videos/upload",
            catch_response=True,
        ) as answer:
            error = self.expect(answer, 202)
        self.flow("form upload", started, error)
        if not error:
            self.clean_up(answer.json()["video_id"])


class StatusPoller(FastHttpUser):
    """Polls its video's status ten times a second, as the page and the client do (less often).

    ``FastHttpUser``, locust's lighter HTTP client: at 200 requests a second the load tool shares
    the CPUs with the service it measures, and this one takes about half the CPU of ``HttpUser``.
    """

    wait_time = constant_throughput(10)

    def on_start(self) -> None:
        self.headers, self.video_id = sign_in()

    @task
    def status(self) -> None:
        self.client.get(f"/api/videos/{self.video_id}", headers=self.headers, name="GET /api/videos/{id}")
