"""Slow clients against the real web tier: nginx in front of gunicorn, as `make run` and production start it."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request

import pytest

from tests.conftest import get

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
