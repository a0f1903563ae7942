"""Keep the SQS messages this worker holds invisible while it works on them.

Celery takes the receipt handle away from the task's request, so the task can't extend
its own message; the worker's main process can. This consumer bootstep runs a thread
that, every quarter of the visibility timeout, walks the active and reserved requests
and calls ``ChangeMessageVisibility`` on each message not yet acknowledged. The queue's
own timeout can then be short (a dead worker's job returns within it) while a live job of
any length is never delivered twice. On warm shutdown (SIGTERM) the jobs get a grace
period; those still running after it are stopped, and the worker's main process retries them
at once (their messages are made visible only if that retry could not be sent).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterable
from typing import Any

from celery import bootsteps
from celery.signals import worker_shutting_down
from celery.worker import state

from config import Settings
from domain.storage import aws_client
from ops.aws import queue_url
from tasks.scratch import alive

logger = logging.getLogger(__name__)


def held_requests() -> list[Any]:
    """Return the requests this worker holds a message for and has not acknowledged."""
    for _ in range(3):  # the consumer thread may change the sets while we copy them
        try:
            requests = [*state.active_requests, *state.reserved_requests]
            break
        except RuntimeError:
            continue
    else:
        return []
    unique = {r.id: r for r in requests if r.message is not None and not r.message.acknowledged}
    return list(unique.values())


class MessageKeeper:
    """Extend, or release, the visibility of the messages behind requests."""

    def __init__(self, settings: Settings, client: Any = None) -> None:
        self.settings = settings
        self.visibility = int(settings.SQS_VISIBILITY_TIMEOUT)
        self.client = client or aws_client("sqs", settings, retries={"max_attempts": 2}, read_timeout=10)
        self.released: set[str] = set()
        self._url: str | None = None

    def url(self, request: Any) -> str:
        info = request.message.delivery_info or {}
        if info.get("sqs_queue"):
            return info["sqs_queue"]
        if self._url is None:
            self._url = queue_url(self.settings, self.client)
        return self._url

    def _change(self, request: Any, seconds: int) -> bool:
        handle = request.message.delivery_tag
        try:
            self.client.change_message_visibility(
                QueueUrl=self.url(request), ReceiptHandle=handle, VisibilityTimeout=seconds
            )
            return True
        except Exception as exc:  # a failed extension is logged, not fatal: SQS may redeliver
            logger.warning(
                "visibility change failed",
                extra={"task_id": request.id, "seconds": seconds, "error": repr(exc)},
            )
            return False

    def extend(self, requests: Iterable[Any]) -> int:
        """Push each message's visibility a full timeout into the future; return how many."""
        return sum(self._change(r, self.visibility) for r in requests if r.message.delivery_tag not in self.released)

    def release(self, request: Any) -> None:
        """Make the message visible now, so another worker takes it at once."""
        self.released.add(request.message.delivery_tag)
        if self._change(request, 0):
            logger.info("message released", extra={"task_id": request.id})


def stop_job(request: Any, timeout: float = 15) -> None:
    """Stop the pool process running ``request`` and wait for it to be gone.

    Billiard turns SIGTERM into ``SystemExit`` in the child: the task hands its row back,
    FFmpeg is killed and the scratch directory removed on the way out.
    """
    pid = getattr(request, "worker_pid", None)
    if not pid or pid == os.getpid():
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def acknowledged(request: Any, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for the request's message to be acknowledged (or rejected)."""
    deadline = time.monotonic() + timeout
    while not request.message.acknowledged:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def make_step(settings: Settings) -> type[bootsteps.StartStopStep]:
    """Return the consumer bootstep bound to these settings."""

    class VisibilityHeartbeat(bootsteps.StartStopStep):
        requires = ("celery.worker.consumer.tasks:Tasks",)

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            self.keeper: MessageKeeper | None = None
            self.grace = float(settings.SHUTDOWN_GRACE_SECONDS)
            self.interval = max(1.0, int(settings.SQS_VISIBILITY_TIMEOUT) / 4)

        def start(self, parent: Any) -> None:
            if self.keeper is not None:  # the consumer restarts after a connection loss
                return
            self.keeper = MessageKeeper(settings)
            threading.Thread(target=self._beat, name="visibility-heartbeat", daemon=True).start()
            worker_shutting_down.connect(self._on_shutdown, weak=False)
            logger.info("visibility heartbeat started", extra={"every": self.interval})

        def _beat(self) -> None:
            # Runs until the process exits: during a warm shutdown jobs go on after the consumer stops.
            while True:
                time.sleep(self.interval)
                try:
                    assert self.keeper is not None
                    self.keeper.extend(held_requests())
                except Exception:
                    logger.exception("visibility heartbeat round failed")

        def _on_shutdown(self, **_: Any) -> None:
            threading.Thread(target=self._after_grace, name="shutdown-grace", daemon=True).start()

        def _after_grace(self) -> None:
            assert self.keeper is not None
            for request in held_requests():  # not started here: give them to another worker now
                if request not in state.active_requests:
                    self.keeper.release(request)
            time.sleep(self.grace)
            for request in held_requests():
                logger.warning("grace period over; stopping job", extra={"task_id": request.id})
                stop_job(request)  # first, so the row is handed back before anyone can receive the message
                # The main process sees the pool process gone and sends the task's retry at once
                # (task_retry_on_worker_lost), then acknowledges this message. Releasing it too would
                # put a second delivery of the same try on the queue; release only if that didn't happen.
                if not acknowledged(request, timeout=5):
                    self.keeper.release(request)

    return VisibilityHeartbeat
