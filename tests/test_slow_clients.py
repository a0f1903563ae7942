"""Slow clients against the real web tier: nginx in front of gunicorn, as `make run` and production start it."""

from __future__ import annotations

import io
import json
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from deploy import gunicorn_conf
from tests.conftest import PASSWORD, ROOT, get, unique_email

pytestmark = pytest.mark.e2e
SLOW_CLIENTS = 16


def trickle(port: int, n: int) -> list[socket.socket]:
    """Open ``n`` connections that send a request line and one header, then stall."""
    conns = []
    for i in range(n):
        conn = socket.create_connection(("127.0.0.1", port))
        conn.sendall(f"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow-{i}: 1\r\n".encode())
        conns.append(conn)
    return conns


def test_slow_clients_do_not_starve_the_api(web_tier: str) -> None:
    port = int(web_tier.rsplit(":", 1)[1])
    conns = trickle(port, SLOW_CLIENTS)
    try:
        for _ in range(3):  # keep trickling: one more header line every second
            time.sleep(1)
            for i, conn in enumerate(conns):
                conn.sendall(f"X-More-{i}: 1\r\n".encode())
            status, body, seconds = get(f"{web_tier}/healthz", timeout=5)
            assert status == 200 and b"ok" in body
            assert seconds < 2, f"/healthz took {seconds:.2f}s with {SLOW_CLIENTS} slow clients"
    finally:
        for conn in conns:
            conn.close()


def test_a_slow_upload_is_buffered_by_nginx_and_refusals_are_json(web_tier: str) -> None:
    port = int(web_tier.rsplit(":", 1)[1])
    # A body that dribbles in: gunicorn is never involved until it is complete, so /healthz stays fast.
    conn = socket.create_connection(("127.0.0.1", port))
    conn.sendall(
        b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 60\r\n\r\n{"
    )
    try:
        assert get(f"{web_tier}/healthz", timeout=5)[0] == 200
    finally:
        conn.close()
    big = urllib.request.Request(
        f"{web_tier}/api/auth/login", data=b"x" * 200_000, headers={"Content-Type": "application/json"}
    )
    try:
        urllib.request.urlopen(big, timeout=10)
    except urllib.error.HTTPError as exc:
        assert exc.code == 413 and b'"body_too_large"' in exc.read()
    else:
        raise AssertionError("nginx accepted a 200 KB JSON body")


def test_nginx_asks_for_the_token_before_it_takes_an_upload_body(web_tier: str, clip: Callable[[str], Path]) -> None:
    port = int(web_tier.rsplit(":", 1)[1])
    # A gigabyte announced without a token: refused at once, before one byte of the body is read or stored.
    conn = socket.create_connection(("127.0.0.1", port), timeout=5)
    head = "POST /api/videos/upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
    conn.sendall(f"{head}Content-Length: 1000000000\r\n\r\n".encode())
    answer = conn.recv(4096)
    conn.close()
    assert answer.startswith(b"HTTP/1.1 401") and b'"unauthorized"' in answer
    # With a token, the same route takes the upload.
    email = unique_email()
    signup = {"email": email, "password": PASSWORD, "password_confirm": PASSWORD}
    request = urllib.request.Request(
        f"{web_tier}/api/auth/signup", json.dumps(signup).encode(), {"Content-Type": "application/json"}
    )
    urllib.request.urlopen(request, timeout=10).read()
    login = urllib.request.Request(
        f"{web_tier}/api/auth/login",
        json.dumps({"email": email, "password": PASSWORD}).encode(),
        {"Content-Type": "application/json"},
    )
    token = json.loads(urllib.request.urlopen(login, timeout=10).read())["access_token"]
    boundary, body = encode_multipart(
        {"title": "t", "video_file": FileStorage(io.BytesIO(clip("small.mp4").read_bytes()), filename="s.mp4")}
    )
    upload = urllib.request.Request(
        f"{web_tier}/api/videos/upload",
        body,
        {"Content-Type": f"multipart/form-data; boundary={boundary}", "Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(upload, timeout=30) as response:
        assert response.status == 202 and json.loads(response.read())["status"] == "queued"


def test_the_side_that_reuses_a_connection_closes_it_first() -> None:
    # Otherwise a reused connection can meet gunicorn's close: connection reset, a 502 for a POST.
    template = (ROOT / "deploy" / "nginx.conf.template").read_text()
    upstream = re.search(r"upstream api \{(.*?)\}", template, re.S)
    assert upstream, "the template's upstream block"
    nginx = re.search(r"keepalive_timeout (\d+)s;", upstream.group(1))
    assert nginx and int(nginx.group(1)) < gunicorn_conf.keepalive, (nginx, gunicorn_conf.keepalive)
    # The same one hop out: the load balancer's idle timeout (its default 60 s) under nginx's.
    clients = re.search(r"^    keepalive_timeout (\d+)s;", template, re.M)
    assert clients and int(clients.group(1)) > 60
    assert "idle_timeout" not in (ROOT / "deploy" / "cloudformation.yaml").read_text(), "the default 60 s"
