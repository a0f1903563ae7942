"""Prometheus metrics: the API's GET /metrics (also across gunicorn workers) and the worker's own port."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, Worker, free_port, metric, post_upload, signup_and_login, unique_email, wait_for
from tests.test_reliability import (
    Stack,
    stack,  # noqa: F401  (a fixture)
)


def test_the_api_counts_uploads_requests_and_videos(client: FlaskClient, clip: Callable[[str], Path]) -> None:
    headers = signup_and_login(client, unique_email())
    before = client.get("/metrics").text
    assert post_upload(client, headers, clip("small.mp4")).status_code == 202
    assert post_upload(client, headers, clip("still.png")).status_code == 415
    client.get("/api/videos", headers=headers)
    after = client.get("/metrics")
    assert after.status_code == 200 and after.mimetype == "text/plain"
    text = after.text

    def delta(name: str, **labels: str) -> float:
        return metric(text, name, **labels) - metric(before, name, **labels)

    assert delta("videoproc_uploads_total", outcome="accepted") == 1
    assert delta("videoproc_uploads_total", outcome="format_not_allowed") == 1
    route = {"route": "/api/videos", "method": "GET", "status": "200"}
    assert delta("videoproc_request_seconds_count", **route) == 1
    assert metric(text, "videoproc_videos", status="queued") == 1, "the tests start with empty tables"
    assert metric(text, "videoproc_videos", status="processed") == 0
    assert "\nvideoproc_dead_letter_messages " in text


def test_made_up_methods_add_no_series(client: FlaskClient) -> None:
    def series(text: str) -> set[tuple[tuple[str, str], ...]]:
        families = text_string_to_metric_families(text)
        found = (s for f in families if f.name == "videoproc_request_seconds" for s in f.samples)
        return {tuple(sorted(s.labels.items())) for s in found}

    client.open("/api/videos", method="BREW")  # one first: the series for the method "other" may be new
    client.get("/metrics")  # and /metrics's own
    before = series(client.get("/metrics").text)
    for n in range(40):
        client.open(f"/api/videos/made-up-{n}", method=f"X-METHOD-{n}")
    after = series(client.get("/metrics").text)
    assert after == before, sorted(after - before)[:5]
    methods = {dict(labels)["method"] for labels in after}
    assert "other" in methods and not any(m.startswith("X-METHOD") for m in methods)


def test_a_metrics_token_is_required_when_set(make_app: Callable[..., Flask]) -> None:
    client = make_app({"SQS_QUEUE_NAME": "api-tests"}, METRICS_TOKEN="scrape-secret").test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"}).status_code == 200


def test_gunicorn_workers_are_added_up(web_tier: str) -> None:
    healthz = {"route": "/healthz", "method": "GET", "status": "200"}
    before = metric(requests.get(f"{web_tier}/metrics", timeout=10).text, "videoproc_request_seconds_count", **healthz)
    for _ in range(20):  # spread over both gunicorn workers
        assert requests.get(f"{web_tier}/healthz", timeout=10).status_code == 200
    text = requests.get(f"{web_tier}/metrics", timeout=10).text
    pids = {s.labels.get("pid") for f in text_string_to_metric_families(text) for s in f.samples}
    assert metric(text, "videoproc_request_seconds_count", **healthz) - before == 20
    assert pids == {None}, "one sum over both gunicorn workers, not a series per process"


@pytest.mark.e2e
def test_the_worker_serves_its_pools_metrics(
    stack: Callable[..., Stack],  # noqa: F811
    start_worker: Callable[..., Worker],
    clip: Callable[[str], Path],
) -> None:
    port = free_port()
    s = stack({"WORKER_METRICS_PORT": str(port)})
    start_worker("metrics", s.env)
    video_id = s.upload(clip("small.mp4")).json["video_id"]
    s.wait_status(video_id, "processed", timeout=120)
    url = f"http://127.0.0.1:{port}/metrics"
    text = wait_for(lambda: (t := requests.get(url, timeout=5).text) and "videoproc_jobs_total" in t and t, timeout=30)
    assert metric(text, "videoproc_jobs_total", outcome="processed") == 1, (
        "counted in the pool, served by the main process"
    )
    assert metric(text, "videoproc_processing_seconds_count") == 1
    speed = metric(text, "videoproc_processing_speed_sum")
    assert 0 < speed < 100, speed


def test_a_celery_command_leaves_no_samples_directory(base_env: dict[str, str]) -> None:
    env = {k: v for k, v in {**os.environ, **base_env}.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    made = subprocess.run(
        [sys.executable, "-c", "import os, tasks.celery; print(os.environ['PROMETHEUS_MULTIPROC_DIR'])"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    folder = Path(made.stdout.strip())
    assert folder.name.startswith("videoproc-metrics-") and not folder.exists()
