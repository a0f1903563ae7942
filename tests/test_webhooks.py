"""Webhooks: endpoints through the API, the outbox, signatures, the SSRF rules, and deliveries through real workers."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from domain import egress, jobs, webhooks
from domain.errors import Invalid
from domain.extensions import db, get_settings
from domain.models import User, Video, WebhookDelivery, WebhookEndpoint, WebhookEvent, utcnow
from ops.aws import ensure_queues
from tests.conftest import Worker, post_upload, signup_and_login, unique_email, wait_for


def _readme_verify() -> Callable[..., bool]:
    """The README's receiver check, taken from the README itself: what a receiver would copy."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = re.search(r"```python\n(.*?def verify.*?)```", readme, re.S)
    assert block, "the README shows how to verify a signature"
    code = textwrap.dedent(block.group(1))
    assert len([line for line in code.splitlines() if line.strip()]) <= 10, "ten lines of Python"
    scope: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), scope)
    return scope["verify"]


verify = _readme_verify()


# The signature and the rules, in the process


def test_signature_verifies_under_each_secret_in_use_and_not_otherwise() -> None:
    body = b'{"id":"e","type":"video.processed"}'
    now = int(time.time())
    header = webhooks.signature_header(["new-secret", "old-secret"], now, body)

    assert header.startswith(f"t={now},v1=") and header.count("v1=") == 2
    assert verify("new-secret", header, body) and verify("old-secret", header, body)
    assert not verify("other", header, body)
    assert not verify("new-secret", header, body + b" ")
    stale = webhooks.signature_header(["new-secret"], now - 3600, body)
    assert not verify("new-secret", stale, body), "an old timestamp is a replay"


@pytest.mark.parametrize(
    ("address", "local", "refused"),
    [
        ("93.184.216.34", False, None),
        ("2606:4700:4700::1111", False, None),
        ("127.0.0.1", True, None),
        ("::1", True, None),
        ("127.0.0.1", False, "a loopback address"),
        ("127.9.9.9", False, "a loopback address"),
        ("::1", False, "a loopback address"),
        ("10.1.2.3", True, "a private address"),
        ("172.16.0.1", True, "a private address"),
        ("192.168.1.1", True, "a private address"),
        ("100.64.0.1", True, "a private address"),
        ("169.254.169.254", True, "a link-local address (the metadata service's range)"),
        ("fe80::1", True, "a link-local address (the metadata service's range)"),
        ("fd00:ec2::254", True, "a private address"),  # the metadata service over IPv6
        ("::ffff:169.254.169.254", True, "a link-local address (the metadata service's range)"),
        ("::ffff:10.0.0.1", True, "a private address"),
        ("64:ff9b::a9fe:a9fe", True, "a link-local address (the metadata service's range)"),  # NAT64
        ("2002:a9fe:a9fe::1", True, "a link-local address (the metadata service's range)"),  # 6to4
        ("224.0.0.1", True, "a multicast address"),
        ("ff02::1", True, "a multicast address"),
        ("0.0.0.0", True, "a reserved address"),
        ("240.0.0.1", True, "a reserved address"),
    ],
)
def test_addresses_outside_the_public_internet_are_refused(address: str, local: bool, refused: str | None) -> None:
    assert egress.address_problem(address, allow_local=local) == refused


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://example.com/hook", "only https:// URLs are allowed"),
        ("https://127.0.0.1/hook", "the host is a loopback address"),
        ("https://169.254.169.254/latest/meta-data/", "the host is a link-local address"),
        ("https://[::ffff:127.0.0.1]/", "the host is a loopback address"),
        ("https://user:pass@example.com/", "credentials in the URL are not allowed"),
        ("ftp://example.com/", "only https:// URLs are allowed"),
        ("https:///nohost", "the URL has no host"),
        ("https://example.com:99999/", "not a URL"),
        ("https://example.com/hook", None),
    ],
)
def test_production_refuses_urls_by_their_text(url: str, problem: str | None) -> None:
    found = egress.url_problem(url, allow_local=False)
    assert (found is None) if problem is None else (found is not None and found.startswith(problem)), found


def test_development_allows_a_local_receiver_over_http() -> None:
    assert egress.url_problem("http://127.0.0.1:8080/hook", allow_local=True) is None
    assert egress.url_problem("http://10.0.0.1/hook", allow_local=True) == "the host is a private address"


def resolving_to(monkeypatch: pytest.MonkeyPatch, *answers: list[str]) -> list[str]:
    """Make DNS answer each of ``answers`` in turn (the last one for ever); return the names looked up."""
    asked: list[str] = []
    queue = list(answers)

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        asked.append(host)
        addresses = queue.pop(0) if len(queue) > 1 else queue[0]
        family = {4: socket.AF_INET, 6: socket.AF_INET6}
        return [(family[6 if ":" in a else 4], socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def test_a_name_that_resolves_to_a_private_address_is_refused(monkeypatch: pytest.MonkeyPatch, ctx: None) -> None:
    settings = get_settings().replace(WEBHOOK_ALLOW_LOCAL=False)
    resolving_to(monkeypatch, ["10.0.0.5"])
    with pytest.raises(Invalid, match="resolves to a private address"):
        webhooks.check_url("https://hooks.example.com/in", settings)
    resolving_to(monkeypatch, ["93.184.216.34", "127.0.0.1"])  # one address of several is enough
    with pytest.raises(Invalid, match="resolves to a loopback address"):
        webhooks.check_url("https://hooks.example.com/in", settings)
    resolving_to(monkeypatch, ["93.184.216.34"])
    webhooks.check_url("https://hooks.example.com/in", settings)


def test_the_address_is_checked_again_at_delivery_and_the_checked_one_is_connected_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DNS rebinding: public when the endpoint was added, the metadata service when the POST is made."""
    asked = resolving_to(monkeypatch, ["169.254.169.254"])
    with pytest.raises(egress.Refused, match="link-local"):
        egress.post("https://hooks.example.com/in", b"{}", {}, timeout=5, allow_local=False)
    assert asked == ["hooks.example.com"]

    connected: list[Any] = []

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> Any:
        connected.append(address)
        raise ConnectionRefusedError("not here")

    resolving_to(monkeypatch, ["93.184.216.34"])
    monkeypatch.setattr(socket, "create_connection", create_connection)
    with pytest.raises(OSError, match="not here"):
        egress.post("https://hooks.example.com/in", b"{}", {}, timeout=5, allow_local=False)
    assert connected == [("93.184.216.34", 443)], "the connection goes to the address checked, not the name"


def test_backoff_starts_at_the_setting_and_doubles_up_to_an_hour() -> None:
    assert [webhooks.backoff(n, 10) for n in (1, 2, 3, 4)] == [10, 20, 40, 80]
    assert webhooks.backoff(30, 10) == 3600


# Endpoints through the API


def test_endpoints_are_added_listed_rotated_and_removed(client: FlaskClient, auth: dict[str, str], ctx: None) -> None:
    added = client.post("/api/webhooks", json={"url": "https://hooks.example.com/in"}, headers=auth)
    assert added.status_code == 201, added.json
    body = added.json
    assert body["events"] == list(webhooks.EVENTS) and body["secret"].startswith("whsec_")
    assert body["disabled_at"] is None and body["previous_secret_expires_at"] is None

    listed = client.get("/api/webhooks", headers=auth).json["items"]
    assert [e["id"] for e in listed] == [body["id"]] and "secret" not in listed[0], "the secret is shown once"

    rotated = client.post(f"/api/webhooks/{body['id']}/rotate-secret", headers=auth).json
    assert rotated["secret"] != body["secret"]
    endpoint = db.session.get(WebhookEndpoint, body["id"])
    assert endpoint is not None
    assert webhooks.signing_secrets(endpoint, utcnow()) == [rotated["secret"], body["secret"]]
    assert webhooks.signing_secrets(endpoint, utcnow() + timedelta(hours=24, seconds=1)) == [rotated["secret"]]

    other = signup_and_login(client, unique_email())
    assert client.delete(f"/api/webhooks/{body['id']}", headers=other).status_code == 404
    assert client.delete(f"/api/webhooks/{body['id']}", headers=auth).status_code == 204
    assert client.get(f"/api/webhooks/{body['id']}", headers=auth).status_code == 404


def test_bad_endpoints_are_refused_with_a_reason(client: FlaskClient, auth: dict[str, str]) -> None:
    private = client.post("/api/webhooks", json={"url": "http://10.0.0.1/hook"}, headers=auth)
    assert private.status_code == 400 and private.json["error"]["code"] == "url_not_allowed"
    assert "private address" in private.json["error"]["message"]
    unknown = client.post("/api/webhooks", json={"url": "https://a.example/", "events": ["video.eaten"]}, headers=auth)
    assert unknown.status_code == 400 and unknown.json["error"]["code"] == "invalid_request"
    some = client.post("/api/webhooks", json={"url": "https://a.example/", "events": ["video.failed"]}, headers=auth)
    assert some.status_code == 201 and some.json["events"] == ["video.failed"]
    limit = get_settings(client.application).WEBHOOK_MAX_ENDPOINTS
    for _ in range(limit - 1):
        assert client.post("/api/webhooks", json={"url": "https://a.example/"}, headers=auth).status_code == 201
    over = client.post("/api/webhooks", json={"url": "https://a.example/"}, headers=auth)
    assert over.status_code == 409 and over.json["error"]["code"] == "too_many_endpoints"


def _user_with_endpoint(client: FlaskClient, events: list[str] | None = None) -> tuple[dict[str, str], str, User]:
    headers = signup_and_login(client, unique_email())
    body = {"url": "https://hooks.example.com/in", **({"events": events} if events else {})}
    endpoint_id = client.post("/api/webhooks", json=body, headers=headers).json["id"]
    user = db.session.scalar(db.select(User).order_by(User.id.desc()))
    assert user is not None
    return headers, endpoint_id, user


def _video(user: User, status: str = "queued") -> Video:
    video = Video(user_id=user.id, title="clip", original_key="originals/x", status=status)
    db.session.add(video)
    db.session.commit()
    return video


@pytest.mark.commits
def test_the_event_is_written_with_the_change_and_never_without_it(app: Flask, client: FlaskClient) -> None:
    with app.app_context():
        headers, endpoint_id, user = _user_with_endpoint(client, ["video.cancelled"])
        video = _video(user)

        assert jobs.cancel(video.id)
        db.session.rollback()  # the change rolls back: so does its event
        assert db.session.scalar(db.select(db.func.count()).select_from(WebhookEvent)) == 0
        assert db.session.get(Video, video.id).status == "queued"

        assert jobs.cancel(video.id)
        db.session.commit()
        event = db.session.scalars(db.select(WebhookEvent)).one()
        body = json.loads(event.body)
        assert body["id"] == event.id and body["type"] == "video.cancelled"
        assert body["data"]["video"]["id"] == video.id and body["data"]["video"]["status"] == "cancelled"
        assert "processed_url" not in body["data"]["video"] and "original_url" not in body["data"]["video"]
        delivery = db.session.scalars(db.select(WebhookDelivery)).one()
        assert (delivery.endpoint_id, delivery.event_id, delivery.status) == (endpoint_id, event.id, "pending")

        failed = _video(user, status="processing")  # an event the endpoint did not ask for
        assert jobs._move("fail", failed.id, error_code="x", error_message="y")
        db.session.commit()
        assert db.session.scalar(db.select(db.func.count()).select_from(WebhookEvent)) == 1

        log = client.get(f"/api/webhooks/{endpoint_id}/deliveries", headers=headers).json
        assert [(d["id"], d["event_id"], d["status"]) for d in log["items"]] == [(delivery.id, event.id, "pending")]
        again = client.post(f"/api/webhooks/{endpoint_id}/deliveries/{delivery.id}/redeliver", headers=headers)
        assert again.status_code == 409 and again.json["error"]["code"] == "delivery_pending", "one try at a time"
        for bad in ("%00", "not-a-uuid", "x" * 300):  # never a database error
            assert client.get(f"/api/webhooks/{bad}", headers=headers).status_code == 404
            assert (
                client.post(f"/api/webhooks/{endpoint_id}/deliveries/{bad}/redeliver", headers=headers).status_code
                == 404
            )


def test_the_openapi_document_describes_the_event_bodies(client: FlaskClient) -> None:
    spec = client.get("/api/openapi.json").json
    callbacks = spec["paths"]["/api/webhooks"]["post"]["callbacks"]
    assert set(callbacks) == set(webhooks.EVENTS)
    assert set(spec["components"]["schemas"]["WebhookEvent"]["properties"]) == {"id", "type", "created_at", "data"}
    assert "/api/webhooks/{endpoint_id}/deliveries/{delivery_id}/redeliver" in spec["paths"]


# Deliveries through real workers


class Receiver:
    """A local HTTP receiver: answers from ``statuses`` in turn (the last for ever) and records every request."""

    def __init__(self, statuses: list[int], hold: float = 0.0) -> None:
        self.statuses, self.hold = list(statuses), hold
        self.requests: list[tuple[float, dict[str, str], bytes]] = []
        self.arrived = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((time.time(), dict(self.headers), body))
                receiver.arrived.set()
                first = len(receiver.requests) == 1
                if first and receiver.hold:
                    time.sleep(receiver.hold)
                status = receiver.statuses.pop(0) if len(receiver.statuses) > 1 else receiver.statuses[0]
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(statuses: list[int], hold: float = 0.0) -> Receiver:
        made.append(Receiver(statuses, hold))
        return made[-1]

    yield make
    for r in made:
        r.close()


HOOKS_ENV = {"WEBHOOK_RETRY_SECONDS": "1"}


@pytest.mark.e2e
def test_a_processed_video_is_delivered_signed_and_retried_until_acknowledged(
    e2e_app: Flask,
    worker: Worker,
    start_worker: Callable[..., Worker],
    receiver: Callable[..., Receiver],
    clip: Callable[[str], Path],
) -> None:
    """The receiver answers 500, then 200: one event, delivered twice, with one id, and both attempts on the log."""
    hooks = start_worker(
        "hooks", {"SQS_QUEUE_NAME": "e2e", **HOOKS_ENV}, concurrency=4, args=("-Q", "e2e-webhooks", "-P", "threads")
    )
    target = receiver([500, 200])
    client = e2e_app.test_client()
    headers = signup_and_login(client, unique_email())
    added = client.post("/api/webhooks", json={"url": target.url}, headers=headers).json
    accepted = post_upload(client, headers, clip("small.mp4")).json

    wait_for(lambda: len(target.requests) >= 2, timeout=180, what="two deliveries")
    (first_at, first, first_body), (second_at, second, second_body) = target.requests[:2]
    assert first_body == second_body, "the same event, byte for byte"
    event = json.loads(second_body)
    assert event["type"] == "video.processed" and event["data"]["video"]["id"] == accepted["video_id"]
    assert event["data"]["video"]["status"] == "processed" and event["data"]["video"]["progress"] == 100
    assert first["Videoproc-Event-Id"] == second["Videoproc-Event-Id"] == event["id"]
    assert verify(added["secret"], second["Videoproc-Signature"], second_body)
    assert verify(added["secret"], first["Videoproc-Signature"], first_body)
    assert second_at - first_at >= 0.9, "the retry waited its backoff (WEBHOOK_RETRY_SECONDS=1)"

    def logged() -> dict | None:
        items = client.get(f"/api/webhooks/{added['id']}/deliveries", headers=headers).json["items"]
        return items[0] if items and items[0]["status"] == "succeeded" else None

    delivery = wait_for(logged, timeout=30, what="the delivery succeeded")
    assert delivery["event_id"] == event["id"] and delivery["event_type"] == "video.processed"
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 200]
    assert delivery["attempts"][0]["error"] == "answered HTTP 500" and delivery["attempts"][1]["error"] is None
    assert delivery["next_attempt_at"] is None
    assert hooks.metric("videoproc_webhook_attempts_total", outcome="retrying") == 1
    assert hooks.metric("videoproc_webhook_attempts_total", outcome="succeeded") == 1
    assert worker.metric("videoproc_webhook_attempts_total", outcome="succeeded") == 0, "not the video worker's time"


@pytest.mark.e2e
def test_a_worker_killed_during_a_delivery_leaves_it_to_be_delivered_again(
    make_app: Callable[..., Flask],
    app: Flask,
    start_worker: Callable[..., Worker],
    receiver: Callable[..., Receiver],
) -> None:
    """kill -9 while the receiver holds the POST: the message comes back after the visibility timeout."""
    env = {
        "SQS_QUEUE_NAME": "hooks-kill",
        "SQS_VISIBILITY_TIMEOUT": "6",
        "STALE_AFTER_SECONDS": "3",
        "HEARTBEAT_SECONDS": "1",
        "WEBHOOK_TIMEOUT_SECONDS": "2",
        **HOOKS_ENV,
    }
    flask_app = make_app(env)
    with flask_app.app_context():
        ensure_queues(get_settings(flask_app))
    args = ("-Q", "hooks-kill-webhooks", "-P", "threads")
    first = start_worker("hooks-a", env, concurrency=2, args=args)
    target = receiver([200], hold=4.0)
    client = flask_app.test_client()
    with flask_app.app_context():
        _, endpoint_id, user = _user_with_endpoint(client)
        db.session.get(WebhookEndpoint, endpoint_id).url = target.url
        video = _video(user)
        assert jobs.cancel(video.id)
        db.session.commit()  # the event's delivery is sent now

    assert target.arrived.wait(60), "the first worker posted"
    os.killpg(first.proc.pid, signal.SIGKILL)
    first.proc.wait()
    start_worker("hooks-b", env, concurrency=2, args=args)

    wait_for(lambda: len(target.requests) >= 2, timeout=90, what="the delivery again")
    assert target.requests[0][2] == target.requests[1][2]
    with flask_app.app_context():

        def succeeded() -> WebhookDelivery | None:
            db.session.expire_all()
            delivery = db.session.scalars(db.select(WebhookDelivery)).one()
            return delivery if delivery.status == "succeeded" else None

        delivery = wait_for(succeeded, timeout=30, what="the delivery succeeded")
        assert delivery.attempts == 2
        assert [(a.status_code, a.error) for a in delivery.tries] == [(None, webhooks.UNFINISHED), (200, None)]


# The delivery task, in this process: each of its turns


def _pending(client: FlaskClient, url: str) -> tuple[dict[str, str], str, WebhookDelivery]:
    """A user whose endpoint at ``url`` has one delivery pending: a cancelled video's."""
    headers, endpoint_id, user = _user_with_endpoint(client)
    db.session.get(WebhookEndpoint, endpoint_id).url = url
    video = _video(user)
    assert jobs.cancel(video.id)
    db.session.commit()
    return headers, endpoint_id, db.session.scalars(db.select(WebhookDelivery)).one()


def _due(delivery_id: str, ago: float = 1) -> None:
    delivery = db.session.get(WebhookDelivery, delivery_id)
    delivery.next_attempt_at = utcnow() - timedelta(seconds=ago)
    db.session.commit()


@pytest.mark.commits
def test_the_task_retries_with_backoff_waits_its_turn_and_succeeds(
    app: Flask, client: FlaskClient, receiver: Callable[..., Receiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks import webhooks as task
    from tasks.webhooks import deliver_webhook

    sent: list[tuple[str, float]] = []  # the messages a turn sends on: (delivery, delay)
    monkeypatch.setattr(task, "send_delivery", lambda delivery_id, delay=0: sent.append((delivery_id, delay)))
    target = receiver([500, 200])
    with app.app_context():
        _, _, delivery = _pending(client, target.url)
        delivery_id, first = delivery.id, get_settings().WEBHOOK_RETRY_SECONDS

        assert deliver_webhook.run(delivery_id) == "retrying"
        delivery = db.session.get(WebhookDelivery, delivery_id)
        wait = (delivery.next_attempt_at - utcnow()).total_seconds()
        assert first - 2 < wait <= first and delivery.attempts == 1 and delivery.status == "pending"
        assert sent[-1][0] == delivery_id and first - 2 < sent[-1][1] <= first, "the retry's message, held back"
        assert deliver_webhook.run(delivery_id) == "waiting", "a message that comes early sends itself on"
        assert sent[-1][0] == delivery_id and 0 < sent[-1][1] <= first
        assert len(target.requests) == 1

        # A later event of the same video waits for this one (order per video).
        later = WebhookDelivery(
            endpoint_id=delivery.endpoint_id,
            event_id=delivery.event_id,
            video_id=delivery.video_id,
            created_at=delivery.created_at + timedelta(seconds=1),
            next_attempt_at=utcnow(),
        )
        db.session.add(later)
        db.session.commit()
        assert deliver_webhook.run(later.id) == "behind"
        assert sent[-1][0] == later.id and sent[-1][1] >= first - 2, "until the earlier one's next attempt"

        _due(delivery_id)
        assert deliver_webhook.run(delivery_id) == "succeeded"
        assert deliver_webhook.run(delivery_id) == "skipped", "a delivery that succeeded is never sent again"
        db.session.expire_all()
        done = db.session.get(WebhookDelivery, delivery_id)
        assert (done.status, done.attempts, done.next_attempt_at) == ("succeeded", 2, None)
        assert [(a.status_code, a.error) for a in done.tries] == [(500, "answered HTTP 500"), (200, None)]
        assert all(a.duration_ms is not None and a.duration_ms >= 0 for a in done.tries)
        assert target.requests[0][2] == target.requests[1][2]


@pytest.mark.commits
def test_a_delivery_that_fails_for_a_day_fails_and_enough_of_them_disable_the_endpoint(
    app: Flask, client: FlaskClient, receiver: Callable[..., Receiver]
) -> None:
    from tasks.webhooks import deliver_webhook

    target = receiver([500])
    with app.app_context():
        headers, endpoint_id, delivery = _pending(client, target.url)
        endpoint = db.session.get(WebhookEndpoint, endpoint_id)
        endpoint.failed_in_a_row = get_settings().WEBHOOK_DISABLE_AFTER - 1
        delivery.created_at = utcnow() - timedelta(hours=24)  # its retries have run out
        db.session.commit()

        assert deliver_webhook.run(delivery.id) == "failed"
        shown = client.get(f"/api/webhooks/{endpoint_id}", headers=headers).json
        assert shown["disabled_at"] is not None and "failed for 24 h" in shown["disabled_reason"]
        assert "HTTP 500" in shown["disabled_reason"], "the owner sees why"

        video = _video(db.session.get(User, endpoint.user_id))
        assert jobs.cancel(video.id)
        db.session.commit()
        assert db.session.scalar(db.select(db.func.count()).select_from(WebhookDelivery)) == 1, "none for it now"
        again = client.post(f"/api/webhooks/{endpoint_id}/deliveries/{delivery.id}/redeliver", headers=headers)
        assert again.status_code == 409 and again.json["error"]["code"] == "endpoint_disabled"

        assert client.post(f"/api/webhooks/{endpoint_id}/enable", headers=headers).json["disabled_at"] is None
        again = client.post(f"/api/webhooks/{endpoint_id}/deliveries/{delivery.id}/redeliver", headers=headers)
        assert again.status_code == 202 and again.json["status"] == "pending"


@pytest.mark.commits
def test_a_url_that_became_private_is_refused_at_delivery_and_retried(app: Flask, client: FlaskClient) -> None:
    from tasks.webhooks import deliver_webhook

    with app.app_context():
        _, endpoint_id, delivery = _pending(client, "http://10.0.0.1/hook")
        assert deliver_webhook.run(delivery.id) == "retrying"
        attempt = db.session.get(WebhookDelivery, delivery.id).tries[0]
        assert attempt.status_code is None and attempt.error == "refused: the host is a private address"

        endpoint = db.session.get(WebhookEndpoint, endpoint_id)
        endpoint.disabled_at = utcnow()
        _due(delivery.id)
        assert deliver_webhook.run(delivery.id) == "disabled"
        assert db.session.get(WebhookDelivery, delivery.id).status == "failed"


@pytest.mark.commits
def test_the_sweeper_resends_a_lost_delivery_and_prunes_old_events(app: Flask, client: FlaskClient) -> None:
    with app.app_context():
        settings = get_settings()
        _, _, delivery = _pending(client, "https://hooks.example.com/in")
        assert webhooks.relay(settings) == [], "not overdue yet"
        _due(delivery.id, ago=settings.SWEEP_AFTER_SECONDS + 5)
        assert webhooks.relay(settings) == [delivery.id]
        db.session.commit()
        assert webhooks.relay(settings) == [], "taken: sent once"

        event = db.session.get(WebhookEvent, delivery.event_id)
        event.created_at = utcnow() - timedelta(days=settings.WEBHOOK_KEEP_DAYS + 1)
        db.session.commit()
        assert webhooks.prune(settings) == 0, "a pending delivery keeps its event"
        webhooks.fail(db.session.get(WebhookDelivery, delivery.id), utcnow())
        db.session.commit()
        assert webhooks.prune(settings) == 1
        db.session.commit()
        assert db.session.scalar(db.select(db.func.count()).select_from(WebhookDelivery)) == 0


def test_production_refuses_local_receivers_and_defaults_to_refusing_them() -> None:
    from config import ConfigError, load_settings
    from tests.test_config import PRODUCTION

    production = {**PRODUCTION, "S3_BUCKET": "videos"}
    assert load_settings(production).WEBHOOK_ALLOW_LOCAL is False
    with pytest.raises(ConfigError, match="WEBHOOK_ALLOW_LOCAL"):
        load_settings({**production, "WEBHOOK_ALLOW_LOCAL": "true"})
    assert load_settings({"SECRET_KEY": "x"}).WEBHOOK_ALLOW_LOCAL is True, "make run: a receiver on 127.0.0.1"


@pytest.mark.commits
def test_an_attempt_that_a_later_one_overtook_records_its_answer_and_settles_nothing(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its lease ran out during the POST and another worker took the delivery: only the latest attempt settles it."""
    from tasks import webhooks as task

    with app.app_context():
        _, _, delivery = _pending(client, "https://hooks.example.com/in")
        delivery_id = delivery.id

        def slow_post(*args: Any, **kwargs: Any) -> egress.Answer:
            _due(delivery_id)  # meanwhile the lease ran out, and another worker claimed it
            assert webhooks.claim(delivery_id, 60) is not None
            db.session.commit()
            return egress.Answer(500, b"", 0.1)

        monkeypatch.setattr(task.egress, "post", slow_post)
        assert task.deliver_webhook.run(delivery_id) == "superseded"
        db.session.expire_all()
        later = db.session.get(WebhookDelivery, delivery_id)
        assert (later.status, later.attempts) == ("pending", 2), "left to the later attempt"
        assert [(a.status_code, a.error) for a in later.tries] == [
            (500, "answered HTTP 500"),
            (None, webhooks.UNFINISHED),
        ]


class _Trickle:
    """A TCP server that answers every connection one byte at a time (``silent``: never a byte)."""

    def __init__(self, silent: bool = False) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.silent = silent
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.trickle, args=(conn,), daemon=True).start()

    def trickle(self, conn: socket.socket) -> None:
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + b"X-Slow: " + b"." * 40 + b"\r\n\r\nok"
        with contextlib.suppress(OSError), conn:
            for byte in b"" if self.silent else answer:
                conn.sendall(bytes([byte]))
                time.sleep(0.1)  # the whole answer takes about 6 s
            time.sleep(10)


@pytest.mark.system
@pytest.mark.parametrize(("scheme", "silent"), [("http", False), ("https", True)])
def test_one_deadline_bounds_the_whole_exchange(scheme: str, silent: bool) -> None:
    """A receiver that trickles its answer, or stalls the TLS handshake, gets a timeout, never a held worker."""
    server = _Trickle(silent)
    try:
        with pytest.raises(TimeoutError, match="no answer within 1 s"):
            egress.post(f"{scheme}://127.0.0.1:{server.port}/", b"{}", {}, timeout=1, allow_local=True)
    finally:
        server.sock.close()


def test_with_sqs_away_a_commit_stops_at_its_first_unsent_delivery(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each send would wait out its retries: the first failure leaves the rest to the sweeper's relay at once."""
    from types import SimpleNamespace

    from domain import queue

    tried: list[str] = []

    def away(delivery_id: str, delay: float = 0) -> None:
        tried.append(delivery_id)
        raise ConnectionError("SQS does not answer")

    monkeypatch.setattr(queue, "send_delivery", away)
    session = SimpleNamespace(info={webhooks._TO_SEND: ["a", "b", "c"]})
    webhooks._send_after_commit(session)  # type: ignore[arg-type]
    assert tried == ["a"] and webhooks._TO_SEND not in session.info


@pytest.mark.commits
def test_an_endpoint_removed_during_a_post_ends_the_attempt_quietly(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks import webhooks as task

    with app.app_context():
        headers, endpoint_id, delivery = _pending(client, "https://hooks.example.com/in")

        def removed_meanwhile(*args: Any, **kwargs: Any) -> egress.Answer:
            assert client.delete(f"/api/webhooks/{endpoint_id}", headers=headers).status_code == 204
            return egress.Answer(200, b"", 0.1)

        monkeypatch.setattr(task.egress, "post", removed_meanwhile)
        assert task.deliver_webhook.run(delivery.id) == "removed"
        assert db.session.scalar(db.select(db.func.count()).select_from(WebhookDelivery)) == 0
