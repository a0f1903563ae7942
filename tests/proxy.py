"""A TCP proxy that can be cut and restored, to make S3 or SQS unreachable on demand, or slow."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class TcpProxy:
    """Forward 127.0.0.1:<port> to a target port; ``cut()`` refuses and drops connections.

    ``download_rate`` (bytes per second) throttles what the target sends back, so a download
    lasts as long as its size says, on any machine: a job made long without a slow encode.
    """

    def __init__(self, target_port: int, port: int = 0, download_rate: float | None = None) -> None:
        self.target_port = target_port
        self.port = port
        self.download_rate = download_rate
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.restore()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restore(self) -> None:
        """Listen again (on the same port)."""
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self.port = server.getsockname()[1]
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def cut(self) -> None:
        """Stop listening and close every open connection: clients get refused or reset."""
        with self._lock:
            server, self._server = self._server, None
            conns, self._conns = self._conns, []
        if server is not None:
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept(): no more connections
            server.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)  # close() alone would not wake a thread blocked reading it
            with contextlib.suppress(OSError):
                conn.close()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b, rate in ((client, upstream, None), (upstream, client, self.download_rate)):
                threading.Thread(target=self._pipe, args=(a, b, rate), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, rate: float | None = None) -> None:
        chunk = 65536 if rate is None else max(1024, int(rate / 20))
        try:
            while data := src.recv(chunk):
                dst.sendall(data)
                if rate:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()
