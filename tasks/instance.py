"""Leave an autoscaling group without losing a job.

AWS's pattern for queue workers, in the worker's main process (a consumer bootstep):

- **Scale-in protection while busy.** While this worker holds a job, or the other kind of
  worker beside it runs one (the optimize worker's job directory in ``WORKER_TMP_DIR`` for the
  video worker, and the other way round), its instance is protected from scale-in, and the
  protection is cleared when both are idle, so the group removes idle instances, never one in
  the middle of an encode.
- **Spot notices and lifecycle hooks start the warm shutdown at once.** The instance
  metadata service announces a Spot interruption (``spot/instance-action``) two minutes
  ahead, and a termination lifecycle hook (``autoscaling/target-lifecycle-state`` =
  ``Terminated``) when the group removes the instance anyway. Either way the worker sends
  itself SIGTERM: Celery's warm shutdown stops taking messages, the visibility bootstep
  (``tasks/visibility.py``) releases unstarted messages at once and gives running jobs
  ``SHUTDOWN_GRACE_SECONDS`` before handing them back to the queue.
- **The lifecycle action is completed** when the worker has shut down, so the instance
  leaves without waiting for the hook's timeout.

Active only when ``WORKER_ASG_NAME`` is set (on EC2); the metadata service's address is
``EC2_METADATA_URL`` so tests can stand in for it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from celery import bootsteps
from celery.signals import worker_shutdown

from config import Settings
from domain.storage import aws_client
from tasks.scratch import OPTIMIZE_PREFIX, PREFIX, running_jobs
from tasks.visibility import held_requests

logger = logging.getLogger(__name__)
TOKEN_TTL = 300


class Metadata:
    """A small IMDSv2 client: a session token, then GETs; a missing path is None."""

    def __init__(self, base_url: str, timeout: float = 1.0) -> None:
        self.base, self.timeout = base_url.rstrip("/"), timeout
        self._token: str | None = None
        self._expires = 0.0

    def _request(self, path: str, method: str = "GET", headers: dict[str, str] | None = None) -> str | None:
        request = urllib.request.Request(f"{self.base}/{path}", method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read().decode()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def get(self, path: str) -> str | None:
        """Return the metadata at ``path`` (under ``latest/meta-data/``), or None when there is none."""
        if self._token is None or time.monotonic() > self._expires:
            ttl = {"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL)}
            self._token = self._request("latest/api/token", "PUT", ttl)
            self._expires = time.monotonic() + TOKEN_TTL - 30
        return self._request(f"latest/meta-data/{path}", headers={"X-aws-ec2-metadata-token": self._token or ""})


class InstanceGuard:
    """This instance's place in the worker group: protect it while busy, tell when it must leave."""

    def __init__(self, settings: Settings, metadata: Metadata | None = None, autoscaling: Any = None) -> None:
        self.group, self.hook = settings.WORKER_ASG_NAME, settings.WORKER_LIFECYCLE_HOOK
        self.metadata = metadata or Metadata(settings.EC2_METADATA_URL)
        self.autoscaling = autoscaling or aws_client("autoscaling", settings, retries={"max_attempts": 2})
        self.protected: bool | None = None
        self._instance_id: str | None = None

    @property
    def instance_id(self) -> str:
        if self._instance_id is None:
            self._instance_id = (self.metadata.get("instance-id") or "").strip()
        return self._instance_id

    def protect(self, busy: bool) -> None:
        """Set scale-in protection to ``busy`` when it changes."""
        if busy == self.protected:
            return
        self.autoscaling.set_instance_protection(
            InstanceIds=[self.instance_id], AutoScalingGroupName=self.group, ProtectedFromScaleIn=busy
        )
        self.protected = busy
        logger.info("scale-in protection", extra={"protected": busy, "instance": self.instance_id})

    def leaving(self) -> str | None:
        """Return why this instance is about to go (``spot``, ``scale-in``), or None."""
        if self.metadata.get("spot/instance-action"):
            return "spot"
        if (self.metadata.get("autoscaling/target-lifecycle-state") or "").strip() == "Terminated":
            return "scale-in"
        return None

    def complete_lifecycle(self) -> None:
        """Let the group terminate the instance now (there may be no action waiting: that is fine)."""
        try:
            self.autoscaling.complete_lifecycle_action(
                LifecycleHookName=self.hook,
                AutoScalingGroupName=self.group,
                InstanceId=self.instance_id,
                LifecycleActionResult="CONTINUE",
            )
            logger.info("lifecycle action completed", extra={"instance": self.instance_id})
        except Exception as exc:
            logger.info("no lifecycle action to complete", extra={"error": repr(exc)})


def make_step(settings: Settings) -> type[bootsteps.StartStopStep]:
    """Return the consumer bootstep that watches this instance (a no-op without ``WORKER_ASG_NAME``)."""

    class InstanceWatch(bootsteps.StartStopStep):
        requires = ("celery.worker.consumer.tasks:Tasks",)

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            self.guard: InstanceGuard | None = None
            self.every = float(settings.INSTANCE_CHECK_SECONDS)
            self.leaving: str | None = None
            self.others = OPTIMIZE_PREFIX  # the scratch prefix of the other kind of worker on this host

        def start(self, parent: Any) -> None:
            if self.guard is not None or not settings.WORKER_ASG_NAME:
                return
            self.guard = InstanceGuard(settings)
            queues = {q.name for q in getattr(parent.task_consumer, "queues", [])}
            optimizing = any(name.endswith(settings.OPTIMIZE_QUEUE_NAME) for name in queues)
            self.others = PREFIX if optimizing else OPTIMIZE_PREFIX
            worker_shutdown.connect(self._on_shutdown, weak=False)
            threading.Thread(target=self._watch, name="instance-watch", daemon=True).start()
            logger.info("instance watch started", extra={"group": settings.WORKER_ASG_NAME, "every": self.every})

        def _watch(self) -> None:
            assert self.guard is not None
            while True:
                try:
                    # Its own jobs, and those of the other kind of worker beside it on this host (the optimize
                    # worker's for the video worker, and the other way round).
                    others = running_jobs(settings.WORKER_TMP_DIR, self.others) > 0
                    self.guard.protect(bool(held_requests()) or others)
                    if self.leaving is None and (reason := self.guard.leaving()):
                        self.leaving = reason
                        logger.warning("instance leaving: warm shutdown", extra={"reason": reason})
                        os.kill(os.getpid(), signal.SIGTERM)
                except Exception:
                    logger.exception("instance watch round failed")
                time.sleep(self.every)

        def _on_shutdown(self, **_: Any) -> None:
            if self.guard is not None:
                self.guard.complete_lifecycle()

    return InstanceWatch
