"""Requests to URLs that users choose (webhooks), made so that they can only reach the public internet.

A user's URL is an attacker's way into the network the service runs in (SSRF): the
instance's metadata service and its credentials, the database, other hosts of the VPC. So:

* only ``https`` (``http`` too, and loopback addresses, where ``allow_local``: a developer's
  receiver on ``make run``);
* the host is resolved when the request is made and every address it resolves to must be
  public (not loopback, private, shared, link-local with the metadata service, multicast,
  reserved; IPv4 inside IPv6 is judged as the IPv4 it carries); one address refused refuses
  the URL;
* the connection goes to an address that was checked, never to the name again, so a DNS
  answer that changes between the check and the connect (rebinding) can't move it; TLS
  still verifies the certificate against the name;
* no redirect is followed, the whole exchange has one deadline, and at most ``max_bytes``
  of the answer are read.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
NAT64 = ipaddress.ip_network("64:ff9b::/96")
SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT: not the internet either
# Not the internet, whatever a Python release's ``is_global`` says of them (it has changed between
# patch releases): IETF protocol assignments, local-use NAT64, documentation, benchmarking.
NOT_PUBLIC = tuple(
    ipaddress.ip_network(n)
    for n in ("192.0.0.0/24", "192.0.2.0/24", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "64:ff9b:1::/48")
)


class Refused(Exception):
    """The URL, or an address it resolves to, may not be called."""


@dataclass(frozen=True)
class Answer:
    """What a receiver answered: its status and the first bytes of its body."""

    status: int
    body: bytes
    seconds: float


def _embedded(ip: IPAddress) -> IPAddress:
    """Return the IPv4 address an IPv6 one carries (mapped, NAT64, 6to4), else ``ip``."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip in NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def address_problem(address: str, allow_local: bool) -> str | None:
    """Return why ``address`` may not be called, or None when it may."""
    ip = _embedded(ipaddress.ip_address(address.split("%", 1)[0]))  # no zone index
    if ip.is_loopback:
        return None if allow_local else "a loopback address"
    if ip.is_link_local:
        return "a link-local address (the metadata service's range)"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_unspecified or ip.is_reserved:
        return "a reserved address"
    if ip.is_private or ip in SHARED or any(ip in net for net in NOT_PUBLIC) or not ip.is_global:
        return "a private address"
    return None


def url_problem(url: str, allow_local: bool) -> str | None:
    """Return why ``url`` can't be a receiver's, judged by its text alone (no DNS), or None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"not a URL: {exc}"
    schemes = ("https", "http") if allow_local else ("https",)
    if parts.scheme not in schemes:
        return "only https:// URLs are allowed" if not allow_local else "only http:// and https:// URLs are allowed"
    if not parts.hostname:
        return "the URL has no host"
    if parts.username is not None or parts.password is not None:
        return "credentials in the URL are not allowed; the signature authenticates the sender"
    if port == 0:
        return "port 0 is not a port"
    try:
        problem = address_problem(parts.hostname, allow_local)
    except ValueError:  # a name: judged when it is resolved
        return None
    return f"the host is {problem}" if problem else None


def host_port(url: str) -> tuple[str, int]:
    """Return the host and port ``url`` names (its scheme's port by default)."""
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def resolve(host: str, port: int, allow_local: bool) -> list[str]:
    """Return every address ``host`` resolves to, all of them allowed; raise ``Refused`` otherwise."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise Refused(f"the host does not resolve ({exc})") from exc
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    for address in addresses:
        if problem := address_problem(address, allow_local):
            raise Refused(f"the host resolves to {problem}")
    if not addresses:
        raise Refused("the host does not resolve")
    return addresses


class _Pinned(http.client.HTTPSConnection):
    """A connection to ``address`` for the URL's host: TLS (when ``tls``) checks the certificate against the host.

    The socket is ``self.sock`` from the moment it connects, before the TLS handshake, so that the
    deadline's shutdown reaches a handshake that stalls too.
    """

    def __init__(self, host: str, port: int, address: str, timeout: float, tls: bool, expired: threading.Event) -> None:
        self.tls_context = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self.tls_context)
        self.address, self.tls, self.expired = address, tls, expired

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)
        if self.expired.is_set():  # the deadline passed while connecting
            raise TimeoutError("the deadline passed while connecting")
        if self.tls:
            self.sock = self.tls_context.wrap_socket(
                self.sock, server_hostname=self.host, do_handshake_on_connect=False
            )
            self.sock.do_handshake()


def _resolve_within(host: str, port: int, allow_local: bool, seconds: float) -> list[str]:
    """``resolve``, given at most ``seconds``: a name server that never answers can't hold a worker."""
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(resolve(host, port, allow_local))
        except BaseException as exc:  # handed to the caller
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True, name="resolve")
    thread.start()
    thread.join(seconds)
    if not result:
        raise TimeoutError(f"the host did not resolve within {seconds:g} s")
    if isinstance(result[0], BaseException):
        raise result[0]
    return list(result[0])


def post(
    url: str, body: bytes, headers: dict[str, str], timeout: float, allow_local: bool, max_bytes: int = 4096
) -> Answer:
    """POST ``body`` to ``url`` by the rules above; raise ``Refused`` or ``OSError`` (``TimeoutError``) when it can't.

    Any answer is returned, a redirect too (never followed). ``timeout`` bounds everything: DNS,
    connecting, sending and reading the answer.
    """
    if problem := url_problem(url, allow_local):
        raise Refused(problem)
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    host, port = host_port(url)
    start = time.monotonic()
    address = _resolve_within(host, port, allow_local, timeout)[0]
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    # A receiver that trickles its answer a byte at a time can't hold the worker: at the deadline
    # the socket is shut, which ends any read, write or handshake in progress.
    expired = threading.Event()
    remaining = max(0.001, timeout - (time.monotonic() - start))
    conn = _Pinned(host, port, address, remaining, tls, expired)

    def cut() -> None:
        expired.set()
        if conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(max(0.0, timeout - (time.monotonic() - start)), cut)
    timer.start()
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        head = response.read(max_bytes)
        return Answer(response.status, head, time.monotonic() - start)
    except (OSError, http.client.HTTPException) as exc:
        if expired.is_set():
            raise TimeoutError(f"no answer within {timeout:g} s") from exc
        raise OSError(f"{type(exc).__name__}: {exc}") from exc
    finally:
        timer.cancel()
        conn.close()
