"""Serve an original to FFmpeg while it downloads: a loopback HTTP relay over a local copy.

The worker used to download the whole original before FFmpeg started. Now FFmpeg reads
``Relay.url`` (HTTP on 127.0.0.1, the sandbox's only allowed network) and starts at once:
the relay fetches the object from S3 in chunks into a local sparse file, the chunks just
ahead of where FFmpeg reads first, and answers each ranged GET from that file, waiting for
the chunks it needs. A seek (an MP4 whose index is at the end, a badly interleaved file)
costs one more request to the relay and, when the bytes are not there yet, one chunk fetched
out of turn. Only a window ahead of the reader is fetched, so a trimmed encode does not wait
for, nor pay for, the part of a long upload it never reads.

An S3 failure is recorded (``failure``) and breaks the answer being sent: FFmpeg then
fails or stops short, and the job treats it as the transient fault it is, never as a broken
video.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socketserver
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from domain.storage import TRANSFER, Storage

CHUNK = TRANSFER.multipart_chunksize  # one ranged GET to S3, as the worker's other transfers
FETCHERS = TRANSFER.max_request_concurrency  # ranged GETs in flight
WINDOW = 4  # chunks fetched ahead of the reader
BLOCK = 256 * 1024  # copied at a time: to the file from S3, to FFmpeg from the file
ATTEMPTS = 3  # of each chunk, when S3 breaks off mid-body
RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class Relay:
    """One S3 object served to local readers over HTTP while it is fetched into ``path``."""

    def __init__(self, storage: Storage, key: str, path: Path, chunk: int = CHUNK, window: int = WINDOW) -> None:
        self.storage, self.key, self.path, self.chunk, self.window = storage, key, path, chunk, window
        self.size = storage.size(key)  # raises for a missing object, before anything starts
        self.chunks = -(-self.size // chunk)
        self._filled = [0] * self.chunks  # bytes in the file from each chunk's start: readable as they land
        self._busy = [False] * self.chunks
        self._urgent: list[int] = []
        self._reader = 0  # the chunk the latest reader is in
        self._error: BaseException | None = None
        self._closed = False
        self._cond = threading.Condition()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(self._fd, self.size)
        self._token = secrets.token_urlsafe(16)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        # The same answers on a unix socket, for FFmpeg in a jail with no network (media/jail.py): a short
        # folder of its own, since a socket's path is limited to 107 bytes.
        self._socket_dir = tempfile.mkdtemp(prefix="videoproc-relay-")
        self._unix = socketserver.ThreadingUnixStreamServer(os.path.join(self._socket_dir, "s"), _handler(self))
        self._unix.daemon_threads = True
        self._threads = [threading.Thread(target=self._fetch, name=f"relay-{n}", daemon=True) for n in range(FETCHERS)]
        self._threads.append(threading.Thread(target=self._unix.serve_forever, args=(0.1,), daemon=True))
        self._threads.append(threading.Thread(target=self._server.serve_forever, args=(0.1,), daemon=True))

    @property
    def url(self) -> str:
        """What FFmpeg opens: the object, at an address only this process knows."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/{self._token}"

    @property
    def socket(self) -> tuple[str, int]:
        """The jail's way to the relay: its unix socket, and the loopback port its URL names."""
        return str(self._unix.server_address), self._server.server_address[1]

    def failure(self) -> BaseException | None:
        """Return the S3 error that stopped the relay, if one did."""
        return self._error

    def _length(self, index: int) -> int:
        return min(self.chunk, self.size - index * self.chunk)

    def _have(self, index: int) -> bool:
        return self._filled[index] == self._length(index)

    @property
    def fetched(self) -> int:
        """Return how many bytes of the object are in the local file."""
        return sum(self._filled)

    @property
    def complete(self) -> bool:
        return all(self._have(index) for index in range(self.chunks))

    @contextlib.contextmanager
    def checked(self) -> Iterator[None]:
        """Raise the relay's S3 error instead of what FFmpeg made of it, or of a result that may be short."""
        try:
            yield
        except Exception as exc:
            if self._error is not None:
                raise self._error from exc
            raise
        if self._error is not None:
            raise self._error

    def __enter__(self) -> Relay:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop fetching and serving (again: nothing); the local file keeps what was fetched."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        if self._threads[-1].is_alive():  # serving: shutdown() waits for serve_forever to return
            self._server.shutdown()
            self._unix.shutdown()
        self._server.server_close()
        self._unix.server_close()
        shutil.rmtree(self._socket_dir, ignore_errors=True)
        for thread in self._threads:
            if thread.ident is not None:  # started
                thread.join(timeout=10)
        with self._cond:  # every read and write of the file holds the lock and checks `_closed` first
            os.close(self._fd)

    # Fetching -------------------------------------------------------------------------

    def _next(self) -> int | None:
        """Return a chunk to fetch (an urgent one, else the first missing in the window), or None to wait."""
        while self._urgent:
            index = self._urgent.pop(0)
            if not (self._have(index) or self._busy[index]):
                return index
        for index in range(self._reader, min(self._reader + self.window, self.chunks)):
            if not (self._have(index) or self._busy[index]):
                return index
        return None

    def _fetch(self) -> None:
        while True:
            with self._cond:
                while (index := self._next()) is None or self._closed or self._error:
                    if self._closed or self._error:
                        return
                    self._cond.wait()
                self._busy[index] = True
            try:
                self._fetch_chunk(index)
            except Exception as exc:  # S3 failed for good: every reader stops
                with self._cond:
                    self._error = self._error or exc
                    self._cond.notify_all()
                return
            with self._cond:
                self._busy[index] = False

    def _fetch_chunk(self, index: int) -> None:
        start = index * self.chunk
        end = start + self._length(index)
        offset, attempt = start + self._filled[index], 0
        while offset < end:
            try:
                body = self.storage.read_range(self.key, offset, end - 1)
                with contextlib.closing(body):
                    while offset < end and (data := body.read(min(BLOCK, end - offset))):
                        with self._cond:
                            if self._closed:
                                return
                            os.pwrite(self._fd, data, offset)
                            offset += len(data)
                            self._filled[index] = offset - start
                            self._cond.notify_all()
                if offset < end:
                    raise ConnectionError(f"S3 ended the body at byte {offset} of {end}")
            except Exception:
                attempt += 1
                if attempt >= ATTEMPTS or self._closed:
                    raise
                time.sleep(0.2 * attempt)  # then go on from the byte reached

    # Serving --------------------------------------------------------------------------

    def read(self, offset: int, length: int) -> bytes:
        """Return up to ``length`` bytes at ``offset``, waiting for the first of them to arrive.

        Raises ``ConnectionAbortedError`` when the relay stopped (S3 failed, or closed) first.
        """
        index = offset // self.chunk
        with self._cond:
            if index != self._reader or not self._have(index):
                self._reader = index  # the window follows the latest reader
                if not (self._have(index) or self._busy[index]):
                    self._urgent.append(index)
                self._cond.notify_all()
            while True:
                if self._error or self._closed:
                    raise ConnectionAbortedError("the original could not be fetched")
                if (ready := index * self.chunk + self._filled[index] - offset) > 0:
                    return os.pread(self._fd, min(length, ready), offset)
                self._cond.wait()


def _handler(relay: Relay) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection: FFmpeg opens another to seek

        def do_GET(self) -> None:  # the http.server interface
            if self.path != f"/{relay._token}":
                self.send_error(404)
                return
            size = relay.size
            first, last = 0, size - 1
            match = RANGE.match(self.headers.get("Range", ""))
            if match:
                first = int(match[1])
                last = min(int(match[2]), size - 1) if match[2] else size - 1
                if first >= size:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.end_headers()
                    return
            self.send_response(206 if match else 200)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(last - first + 1))
            if match:
                self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
            self.end_headers()
            offset = first
            try:
                while offset <= last:
                    data = relay.read(offset, min(BLOCK, last + 1 - offset))
                    self.wfile.write(data)
                    offset += len(data)
            except (ConnectionAbortedError, BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # S3 failed (the answer stops short), or FFmpeg seeked away

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def address_string(self) -> str:  # a unix socket's peer has no address
            return str(self.client_address[0]) if self.client_address else "unix"

    return Handler
