"""The optimize task: once a video is published, smaller renditions at its quality, then one move to them.

The job that publishes stays as fast as it was (x264 ``veryfast``). Then this task, on its own
queue (``OPTIMIZE_QUEUE_NAME``), reads the original again and makes an H.264 rendition at a
slower preset and, with ``OPTIMIZE=h264+av1``, an AV1 one (SVT-AV1). Each gets the highest CRF
whose SSIM, on a few seconds of this clip, is at least what the published rendition got on the
same frames (media/quality.py). When both are in S3, one move (``optimize.done``) makes the
H.264 file the published one and records the AV1 file; the sweeper deletes the fast file once
the URLs handed out before the move have expired (ops/reconcile.py).

Its workers read only this queue, at idle CPU priority, beside the video workers: the kernel
gives them only the CPU that publishing leaves (docs/architecture.md). A failure, a cancel or
a lost worker here never touches the published video.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.utils.log import get_task_logger
from flask import current_app
from sqlalchemy import select

from celeryconfig import IDLE_FACTOR, OPTIMIZE_TASK
from domain import media, optimize
from domain.extensions import db, get_settings
from domain.models import Video
from domain.storage import Storage, get_storage, rendition_key
from media import quality, runner
from media.pipeline import OwnStepFailed, TruncatedInput
from media.probe import MediaInfo, ProbeError, probe
from media.profile import Profile
from media.runner import FFmpegError
from ops.logs import log_context
from ops.prometheus import OPTIMIZE_JOBS, OPTIMIZE_SECONDS
from tasks.errors import backoff, is_missing, is_transient
from tasks.process import Heartbeat, JobLost, pipeline, step
from tasks.relay import Relay
from tasks.scratch import OPTIMIZE_PREFIX, job_dir, running_jobs

logger = get_task_logger(__name__)
YIELD_CHECK_SECONDS = 0.25


def renditions(config: Any) -> dict[str, Profile]:
    """Return the renditions ``OPTIMIZE`` asks for, by name, with their codec and preset (the CRF is searched)."""
    fast = media.output(config)
    wanted = {"h264": replace(fast, preset=config.OPTIMIZE_H264_PRESET)}
    if config.OPTIMIZE == "h264+av1":
        wanted["av1"] = replace(fast, codec="libsvtav1", preset=str(config.OPTIMIZE_AV1_PRESET))
    return wanted


class Yielding:
    """Hold this job's FFmpeg stopped while any other job runs on the host; let it go on once none does.

    Idle CPU priority still shares the caches and the memory bandwidth, and SMT siblings share a
    core: stopped, the stage costs publishing nothing it can measure (``bench.optimize``). Every
    ``YIELD_CHECK_SECONDS`` this counts the host's jobs by their scratch directories (every
    worker on the host shares ``WORKER_TMP_DIR``) and stops (SIGSTOP) or continues (SIGCONT)
    this job's children: the optimize stage takes only the time that publishing leaves.
    """

    def __init__(self, token: str, scratch: str | None) -> None:
        self.token, self.scratch = token, scratch
        self.paused = False
        self.paused_seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="optimize-yield", daemon=True)

    def _run(self) -> None:
        since = 0.0
        try:
            while not self._stop.wait(YIELD_CHECK_SECONDS):
                try:
                    others = running_jobs(self.scratch) > 0  # processing jobs: this stage's own directory is not one
                except OSError as exc:  # the scratch unreadable for a moment: go on as before
                    logger.warning("optimize: jobs not counted", extra={"error": repr(exc)})
                    continue
                if others != self.paused:
                    runner.pause(self.token, others)
                    self.paused = others
                    if others:
                        since = time.monotonic()
                    else:
                        self.paused_seconds += time.monotonic() - since
                elif others:
                    runner.pause(self.token, True)  # a child started since the last look
        finally:  # whatever ended the loop, never leave this job's FFmpeg stopped
            if self.paused:
                runner.pause(self.token, False)
                self.paused_seconds += time.monotonic() - since

    def __enter__(self) -> Yielding:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class StageFailed(Exception):
    """The stage can't succeed for this video (its file, or FFmpeg on it): record it; the published video stays."""


class OptimizeJob:
    """One delivery of one video's optimize stage, holding it under ``token``."""

    def __init__(self, video_id: str, token: str, lost: Any) -> None:
        self.video_id, self.token, self.lost = video_id, token, lost
        # Its keys' own part: the token and a nonce (a redelivered message has the same token; see ``cleanup``).
        self.attempt = f"{token}-{secrets.token_hex(4)}"
        self.written: list[str] = []  # this attempt's keys: removed unless the row names them
        self._last = 0.0

    def progress(self, percent: int) -> None:
        """Record progress, at most once a second; stop (raise JobLost) once the stage is no longer ours."""
        if self.lost.is_set():
            raise JobLost()
        if time.monotonic() - self._last >= 1.0 or percent >= 100:
            step(optimize.beat(self.video_id, self.token, percent))
            self._last = time.monotonic()

    @contextlib.contextmanager
    def cleanup(self, storage: Storage) -> Iterator[None]:
        """Remove what this attempt wrote to S3, except what the row names now.

        ``done`` may have been committed though its answer never came (the connection lost, the
        task stopped while it waited): the row is read again first. When it can't be, nothing is
        removed; the sweeper removes what a published row does not name (ops/reconcile.py).
        """
        try:
            yield
        finally:
            if self.written and (named := self._named()) is not None:
                removed = [key for key in self.written if key not in named]
                for key in removed:
                    with contextlib.suppress(Exception):  # the sweeper removes what this misses
                        storage.delete(key)
                logger.info("renditions removed", extra={"keys": removed})

    def _named(self) -> set[str] | None:
        """Return the keys the row names now (none once it is deleted); None when the database can't say."""
        try:
            db.session.rollback()
            row = db.session.execute(
                select(Video.processed_key, Video.av1_key, Video.poster_key).where(Video.id == self.video_id)
            ).first()
            db.session.commit()
        except Exception as exc:
            logger.warning("renditions left to the sweeper: the row could not be read", extra={"error": repr(exc)})
            return None
        return {key for key in row or () if key}

    def _encode(self, relay: Relay, info: MediaInfo, workdir: Path, wanted: dict[str, Profile]) -> quality.Made:
        """Find each rendition's CRF on a window of the clip, then encode it whole (media/quality.py)."""
        config = get_settings()
        sandbox = pipeline().sandbox.for_jobs(1)  # idle priority: every core publishing leaves
        # FFmpeg's wall limit grows as the task's (celeryconfig); its CPU-time limit counts only work done.
        sandbox = replace(sandbox, timeout_per_second=sandbox.timeout_per_second * IDLE_FACTOR)
        made = quality.make_renditions(
            relay.url,
            info,
            workdir,
            media.output(config),
            wanted,
            sandbox,
            pipeline().cache_dir,
            config.OPTIMIZE_PROBE_SECONDS,
            relay.socket,
            self.progress,
        )
        for name, record in made.record.items():
            logger.info("rendition made", extra={"rendition": name, **record})
        return made

    @staticmethod
    def _worth(made: quality.Made, published_bytes: int) -> dict[str, Path]:
        """Return the renditions that may serve the video (``quality.worth``); mark the others ``published: false``."""
        for name, record in made.record.items():
            if record["published"] and not quality.worth(record, published_bytes):
                record["published"] = False
                logger.warning("rendition not smaller than the published one: kept out", extra={"rendition": name})
        return {name: path for name, path in made.files.items() if made.record[name]["published"]}

    def run(self) -> str | None:
        """Make the renditions and publish them; return the published H.264 key, or None when the row moved on."""
        started = time.monotonic()
        video = db.session.get(Video, self.video_id)
        assert video is not None
        original, published = video.original_key, video.processed_key
        db.session.commit()
        if published is None:
            raise StageFailed("The video has no published rendition to replace.")
        storage, config = get_storage(), get_settings()
        wanted = renditions(config)
        with self.cleanup(storage), job_dir(self.video_id, config.WORKER_TMP_DIR, OPTIMIZE_PREFIX) as tmp:
            try:
                relay = Relay(storage, original, Path(tmp) / "original")
            except Exception as exc:
                if is_missing(exc):
                    raise StageFailed("The original is no longer in S3.") from exc
                raise
            with relay:
                try:
                    with relay.checked():
                        info = probe(relay.url, pipeline().sandbox, relay.socket)
                        made = self._encode(relay, info, Path(tmp), wanted)
                except (ProbeError, FFmpegError, OwnStepFailed, TruncatedInput) as exc:
                    if self.lost.is_set():
                        raise JobLost() from exc
                    if isinstance(exc, (ProbeError, FFmpegError)) and (
                        exc.blame == runner.HOST or exc.reason == "timeout"
                    ):
                        raise  # the host's fault, or a wall limit run out while publishing kept it stopped: retried
                    # FFmpeg's own words are for the log (runner.FFmpegError), not for the owner.
                    logger.warning("optimize: FFmpeg failed on the video", extra={"error": str(exc)[:500]})
                    raise StageFailed("FFmpeg could not make a smaller rendition of this video.") from exc
            self.progress(95)
            files = self._worth(made, storage.size(published))
            keys = {name: rendition_key(self.video_id, name, self.attempt) for name in files}
            for name, path in files.items():
                self.written.append(keys[name])
                storage.upload_file(path, keys[name], "video/mp4")
            record = {"renditions": made.record, "window_cpu_seconds": made.window_cpu_seconds}
            # Without a worthy H.264 rendition the published file stays the video's (and its H.264 one).
            h264 = keys.get("h264", published)
            if not step(optimize.done(self.video_id, self.token, published, h264, keys.get("av1"), record)):
                logger.warning("the stage is no longer this job's; renditions not published")
                return None
            self.written.clear()  # published: no longer this attempt's to remove
        # The fast file stays until the URLs handed out before the move expire: the sweeper removes it then.
        seconds = time.monotonic() - started
        OPTIMIZE_JOBS.labels(optimize.OPTIMIZED).inc()
        OPTIMIZE_SECONDS.observe(seconds)
        sizes = {f"{name}_bytes": value["bytes"] for name, value in made.record.items()}
        logger.info("optimized", extra={"state": optimize.OPTIMIZED, "seconds": round(seconds, 2), **sizes})
        return h264


def _held_for(video_id: str) -> float | None:
    """Return the seconds until the stage's holder can be judged stale, when it is held; None otherwise."""
    video = db.session.get(Video, video_id)
    db.session.commit()
    if video is None or video.optimize_status != optimize.OPTIMIZING or video.optimize_heartbeat_at is None:
        return None
    age = time.time() - video.optimize_heartbeat_at.timestamp()
    return max(0.0, get_settings().STALE_AFTER_SECONDS - age)


def _end(video_id: str, token: str, message: str) -> None:
    db.session.rollback()
    step(optimize.fail(video_id, token, message))
    OPTIMIZE_JOBS.labels(optimize.FAILED).inc()
    logger.error("optimize failed; the published rendition stays", extra={"reason": message[:500]})


@shared_task(name=OPTIMIZE_TASK, bind=True, max_retries=None, default_retry_delay=0)
def optimize_video(self: Task, video_id: str, recheck: bool = False, again: bool = False) -> str | None:
    """Optimize one published video by id; a delivery for a stage that is not waiting is acknowledged and skipped.

    ``recheck``: an earlier run of this very delivery held the stage; take it only once it is stale.
    ``again``: the retry its previous try asked for after a passing fault (not a lost worker: not counted).
    """
    request, config = self.request, get_settings()
    token = f"{request.id}:{request.retries}"
    previous = f"{request.id}:{request.retries - 1}" if request.retries else None
    stale_after = config.STALE_AFTER_SECONDS
    with log_context(video_id=video_id, task_id=request.id, stage="optimize"):
        dead = None if recheck or again else previous
        if step(optimize.give_up(video_id, stale_after, config.MAX_ATTEMPTS, dead=dead)):
            OPTIMIZE_JOBS.labels(optimize.FAILED).inc()
            logger.error("optimize failed: its worker died too often; the published rendition stays")
            return None
        # A retry after a passing fault continues its attempt, but only from the try that asked for it.
        continues = previous if again else None
        if not step(optimize.claim(video_id, token, None if recheck else previous, stale_after, continues=continues)):
            wait = _held_for(video_id)
            if wait is not None and not recheck:
                logger.warning("held by another run; checking again", extra={"delay": wait})
                raise self.retry(args=[video_id], kwargs={"recheck": True}, countdown=0, delay_seconds=int(wait) + 1)
            logger.info("nothing to optimize")
            return None
        logger.info("optimizing", extra={"state": optimize.OPTIMIZING, "retries": request.retries})
        try:
            flask_app = current_app._get_current_object()  # type: ignore[attr-defined]
            with (
                Heartbeat(flask_app, video_id, token, config.HEARTBEAT_SECONDS, optimize.beat, optimize.holds) as beat,
                runner.owned(token),
                Yielding(token, config.WORKER_TMP_DIR) as yielding,
            ):
                try:
                    return OptimizeJob(video_id, token, beat.lost).run()
                finally:
                    logger.info("optimize yielded", extra={"paused_seconds": round(yielding.paused_seconds, 1)})
        except JobLost:
            db.session.rollback()
            OPTIMIZE_JOBS.labels("stopped").inc()
            logger.warning("optimize stopped: cancelled, deleted or taken over")
        except SystemExit:  # the worker is stopping this job: hand the stage back, the retry takes it
            db.session.rollback()
            step(optimize.release(video_id, token))
            raise
        except StageFailed as exc:
            _end(video_id, token, str(exc))
        except SoftTimeLimitExceeded:
            _end(video_id, token, "The optimize stage took longer than its time limit.")
        except Exception as exc:
            db.session.rollback()
            if not is_transient(exc) and not isinstance(exc, (FFmpegError, ProbeError)):
                logger.exception("optimize: internal error")
                _end(video_id, token, "An internal error stopped the optimize stage; it has been logged.")
                return None
            if request.retries >= config.TASK_MAX_RETRIES:
                logger.warning("optimize: the last passing fault", extra={"error": repr(exc)})
                _end(video_id, token, "Gave up after repeated passing faults of the service (logged).")
                return None
            delay = backoff(request.retries, config.TASK_RETRY_BACKOFF_MAX)
            logger.warning("optimize: transient error; will retry", extra={"error": repr(exc), "delay": delay})
            # The stage stays ``optimizing``, held by this try, until its retry takes it over.
            raise self.retry(
                args=[video_id], kwargs={"again": True}, exc=exc, countdown=0, delay_seconds=delay
            ) from exc
        return None
