"""The processing task: claim the row, download, run the pipeline, upload, record."""

from __future__ import annotations

import contextlib
import functools
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.utils.log import get_task_logger
from flask import Flask, current_app

from celeryconfig import PROCESS_TASK
from domain import jobs, media
from domain.extensions import db, get_settings
from domain.models import Status, Video
from domain.queue import EnqueueError, send_optimize
from domain.storage import Storage, get_storage, poster_key, processed_video_key
from media import runner
from media.pipeline import Pipeline, TruncatedInput
from media.probe import ProbeError, probe
from media.runner import FFmpegError
from media.validate import MediaRejected, check, rejection
from ops.logs import log_context
from ops.prometheus import JOBS, PROCESSING_SECONDS, PROCESSING_SPEED, RETRIES, STEP_SECONDS
from tasks.errors import HostFault, PermanentError, backoff, is_missing, is_transient
from tasks.relay import Relay
from tasks.scratch import job_dir, running_jobs

logger = get_task_logger(__name__)
# Progress: the download takes the first 10%, the pipeline up to 90%, the upload the rest.
DOWNLOADED, ENCODED = 10, 90
PROGRESS_SECONDS = 1.0
# How often a running job looks whether its row is still its own (a cancel stops it within this, plus FFmpeg's exit).
HOLD_CHECK_SECONDS = 1.0


def step(result: bool) -> bool:
    """Commit one step of the job that others must see at once (the claim, a beat, the result); return ``result``.

    The task owns its transactions: each is one step, and none is held open across FFmpeg or S3.
    """
    db.session.commit()
    return result


TIME_LIMIT = "time_limit"  # the suspect reason of a task stopped by its soft time limit


class JobLost(Exception):
    """The row is no longer this delivery's: cancelled, deleted, or taken over. Stop, record nothing."""


@functools.cache
def pipeline() -> Pipeline:
    """Return this worker process's pipeline; its bumpers are rendered once and reused."""
    config = get_settings()
    cache = Path(config.WORKER_TMP_DIR or tempfile.gettempdir()) / "videoproc-bumpers"
    return Pipeline(media.output(config), cache, media.confinement(config))


def _ffmpeg_failure(exc: FFmpegError) -> PermanentError:
    """Return the recorded failure for FFmpeg stopped by the sandbox or by the input; stderr goes to the log."""
    if exc.reason == "resolution":
        return PermanentError("resolution_out_of_bounds", "A picture in the video is larger than the allowed size.")
    if exc.reason == "timeout":
        return PermanentError("timed_out", "Encoding took longer than this video's time limit, twice.")
    if exc.reason in ("memory", "cpu"):
        return PermanentError("too_complex", "Encoding needed more memory or CPU time than allowed.")
    if exc.reason == "crashed":
        return PermanentError("undecodable", "FFmpeg crashed on this video, twice.")
    return PermanentError("undecodable", "FFmpeg could not decode the video.")


def host_fault(exc: FFmpegError | ProbeError, suspect: str | None) -> HostFault | None:
    """Return the fault to retry when FFmpeg's end is not (yet) the file's, or None when it is the file's verdict.

    The host's (killed from outside, stopped, a full scratch disk) is always retried. A suspect one
    (a crash, the wall limit) is retried once; the same reason again, on the retry's new FFmpeg, is
    the file's.
    """
    if exc.blame == runner.HOST or (exc.blame == runner.SUSPECT and exc.reason != suspect):
        return HostFault(exc.reason, f"{'ffprobe' if isinstance(exc, ProbeError) else 'FFmpeg'} {exc.reason}")
    return None


class Heartbeat:
    """Beat the row from a thread while the job runs, even through long downloads and uploads.

    Every ``HOLD_CHECK_SECONDS`` it also reads whether the row is still held; when it is
    not (cancelled, deleted), ``lost`` is set and this job's FFmpeg is killed at once, even
    one that reports no progress (a stalled decode): the job then stops with ``JobLost``.
    Only this job's children are stopped (``runner.stop``): a beat that outlives its job (stuck
    in the database past ``JOIN_SECONDS``) can't touch the next job's FFmpeg. ``beat`` and
    ``holds`` are the stage's own (``jobs``', or the optimize stage's).
    """

    JOIN_SECONDS = 5.0

    def __init__(
        self,
        app: Flask,
        video_id: str,
        token: str,
        every: float,
        beat: Callable[[str, str], bool] = jobs.beat,
        holds: Callable[[str, str], bool] = jobs.holds,
    ) -> None:
        self.app, self.video_id, self.token, self.every = app, video_id, token, every
        self.beat, self.holds = beat, holds
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{video_id}", daemon=True)

    def _run(self) -> None:
        last_beat = time.monotonic()
        while not self._stop.wait(min(self.every, HOLD_CHECK_SECONDS)):
            try:
                with self.app.app_context():
                    if time.monotonic() - last_beat >= self.every:
                        step(self.beat(self.video_id, self.token))
                        last_beat = time.monotonic()
                    if not step(self.holds(self.video_id, self.token)):
                        self.lost.set()
                        runner.stop(self.token)  # this job's children only: never the next job's
                        return
            except Exception as exc:  # a missed beat is not fatal; enough of them make the row stale
                logger.warning("heartbeat failed", extra={"video_id": self.video_id, "error": repr(exc)})

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.JOIN_SECONDS)


class Steps:
    """Wall time of a job's steps, each from the end of the one before."""

    def __init__(self) -> None:
        self.started = self._last = time.monotonic()
        self.seconds: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.seconds[name], self._last = now - self._last, now

    def record(self, content_seconds: float, sharing: int, fetched: int) -> None:
        """Count a processed job in the metrics and log it, with where its time went and the bytes it read."""
        wall = time.monotonic() - self.started
        PROCESSING_SECONDS.observe(wall)
        PROCESSING_SPEED.observe(content_seconds / wall if wall > 0 else 0)
        JOBS.labels("processed").inc()
        for step, seconds in self.seconds.items():
            STEP_SECONDS.labels(step).observe(seconds)
        timings = {f"{step}_seconds": round(seconds, 3) for step, seconds in self.seconds.items()}
        logger.info(
            "processed",
            extra={
                "state": Status.PROCESSED.value,
                "duration": content_seconds,
                "sharing": sharing,
                "fetched_bytes": fetched,  # of the original: a trimmed encode reads only what it uses
                **timings,
            },
        )


class VideoJob:
    """One delivery of one video's processing, holding the row under ``token``."""

    def __init__(self, video_id: str, token: str, lost: threading.Event, suspect: str | None = None) -> None:
        self.video_id, self.token, self.lost, self.suspect = video_id, token, lost, suspect
        self._last_beat, self._last_progress = 0.0, -1

    def progress(self, percent: int) -> None:
        """Record progress, at most once a second; stop (raise JobLost) once the row is no longer ours."""
        if self.lost.is_set():
            raise JobLost()
        now = time.monotonic()
        if percent != self._last_progress and (now - self._last_beat >= PROGRESS_SECONDS or percent >= 100):
            step(jobs.beat(self.video_id, self.token, percent))
            self._last_beat, self._last_progress = now, percent

    @staticmethod
    def _missing(key: str) -> PermanentError:
        return PermanentError("original_missing", f"The original {key} is not in S3.")

    @contextlib.contextmanager
    def _original(self, storage: Storage, key: str, workdir: str) -> Iterator[Relay]:
        """Serve the original to FFmpeg as it downloads into ``workdir`` (tasks/relay.py)."""
        try:
            relay = Relay(storage, key, Path(workdir) / "original")
        except Exception as exc:
            if is_missing(exc):
                raise self._missing(key) from exc
            raise
        with relay:
            yield relay

    def _refused(self, storage: Storage, code: str, message: str) -> PermanentError:
        """Quarantine an original the rules refuse (never deleted in line); return the failure to record."""
        return PermanentError(code, message, storage.quarantine(self.video_id))

    def run(self) -> str:
        """Process the claimed video; return the processed key."""
        steps = Steps()
        video = db.session.get(Video, self.video_id)
        assert video is not None
        original = video.original_key
        db.session.commit()  # hold no transaction open through the long part
        storage = get_storage()
        config = get_settings()
        with job_dir(self.video_id, config.WORKER_TMP_DIR) as tmp, self._original(storage, original, tmp) as relay:
            workdir = Path(tmp)
            steps.lap("download")  # until the original can be read: FFmpeg reads it as it arrives
            self.progress(DOWNLOADED)
            limits = media.limits(config)
            try:
                with relay.checked():  # an S3 failure mid-read is raised as itself, not as a broken video
                    info = probe(relay.url, pipeline().sandbox, relay.socket)
                    check(info, limits)  # the same rules as the upload: the worker trusts no earlier check
                    sharing = running_jobs(config.WORKER_TMP_DIR)  # FFmpeg's threads: the cores shared by these
                    outputs = pipeline().run(
                        relay.url,
                        info,
                        workdir,
                        lambda f: self.progress(DOWNLOADED + int((ENCODED - DOWNLOADED) * f)),
                        sharing,
                        relay.socket,
                    )
            except (ProbeError, FFmpegError) as exc:
                if self.lost.is_set():  # killed by the heartbeat: not a fault of the video
                    raise JobLost() from exc
                stderr = exc.stderr if isinstance(exc, FFmpegError) else exc.detail
                what = "ffmpeg failed" if isinstance(exc, FFmpegError) else "probe failed"
                logger.warning(what, extra={"reason": exc.reason, "blame": exc.blame, "stderr": stderr[-1000:]})
                if (fault := host_fault(exc, self.suspect)) is not None:
                    raise fault from exc
                if isinstance(exc, FFmpegError):
                    raise _ffmpeg_failure(exc) from exc
                refused = rejection(exc, limits)
                raise self._refused(storage, refused.code, refused.message) from exc
            except MediaRejected as exc:
                raise self._refused(storage, exc.code, exc.message) from exc
            except TruncatedInput as exc:
                raise PermanentError("undecodable", f"The video is cut off: {exc}.") from exc
            except Exception as exc:  # S3, while FFmpeg read the original
                if self.lost.is_set():
                    raise JobLost() from exc
                if is_missing(exc):
                    raise self._missing(original) from exc
                raise
            relay.close()  # FFmpeg is done with the original: fetch no more of it
            steps.lap("encode")  # probe, FFmpeg and the poster
            self.progress(ENCODED)
            video_key, image_key = processed_video_key(self.video_id), poster_key(self.video_id)
            storage.upload_file(outputs.video, video_key, "video/mp4")
            assert outputs.poster is not None  # the first rendition makes the poster
            storage.upload_file(outputs.poster, image_key, "image/jpeg")
            steps.lap("upload")
        # Not recorded when the row was deleted, cancelled or taken over while we worked: leave nothing
        # behind for a deleted or cancelled video.
        probed = {"duration": info.duration, "width": info.width, "height": info.height}
        optimizing = config.OPTIMIZE != "off"
        if not step(jobs.finish(self.video_id, self.token, video_key, image_key, probed, optimizing)):
            if (video := db.session.get(Video, self.video_id)) is None or video.status == Status.CANCELLED.value:
                storage.delete_prefix(f"processed/{self.video_id}/")
            logger.warning("row changed during processing; result not recorded")
        else:
            steps.record(outputs.duration, sharing, relay.fetched)
            if optimizing:
                _send_optimize(self.video_id)
        return video_key


def _send_optimize(video_id: str) -> None:
    """Send the published video's optimize message; a failed send leaves the stage ``pending`` for the sweeper."""
    try:
        step(send_optimize(video_id))
    except EnqueueError:
        db.session.rollback()


def _fail(video_id: str, token: str, code: str, message: str, original_key: str | None = None) -> None:
    db.session.rollback()
    step(jobs.fail(video_id, token, code, message, original_key))
    JOBS.labels("failed").inc()
    logger.error("failed", extra={"state": Status.FAILED.value, "code": code, "reason": message[:500]})


def _release(video_id: str, token: str) -> None:
    """Hand the row back to the queue (this delivery stops; another one will take it)."""
    db.session.rollback()
    step(jobs.release(video_id, token))


def _skip_reason(video_id: str) -> str:
    video = db.session.get(Video, video_id)
    return "deleted" if video is None else video.status


def _held_by(video_id: str, token: str) -> float | None:
    """Return the seconds until the row can be judged stale, when ``token`` (this very delivery) holds it."""
    video = db.session.get(Video, video_id)
    db.session.commit()
    if video is None or video.status != Status.PROCESSING.value or video.claimed_by != token:
        return None
    stale_after = get_settings().STALE_AFTER_SECONDS
    beat = video.heartbeat_at
    if beat is None:
        return 0.0
    return max(0.0, stale_after - (datetime.now(UTC) - beat).total_seconds())


@shared_task(name=PROCESS_TASK, bind=True, max_retries=None, default_retry_delay=0)
def process_video(self: Task, video_id: str, recheck: bool = False, suspect: str | None = None) -> str | None:
    """Process one video by id; a delivery for a video that is not waiting is acknowledged and skipped.

    ``recheck``: this delivery follows one that found the row held by itself (SQS
    redelivered a message whose run had not ended): take the row only once it is stale.
    ``suspect``: the previous try's FFmpeg ended for that reason (``host_fault``).
    """
    request = self.request
    token = f"{request.id}:{request.retries}"
    previous = f"{request.id}:{request.retries - 1}" if request.retries else None
    config = get_settings()
    stale_after = config.STALE_AFTER_SECONDS
    with log_context(video_id=video_id, task_id=request.id):
        # The worker's main process retries a job whose pool process died (task_retry_on_worker_lost):
        # then `previous` still holds the row, and its try is known to be over.
        dead = None if recheck else previous
        if step(jobs.give_up(video_id, stale_after, config.MAX_ATTEMPTS, dead=dead)):
            logger.error("failed", extra={"state": Status.FAILED.value, "code": "worker_lost"})
            return None
        if not step(jobs.claim(video_id, token, previous, stale_after, takeover=not recheck)):
            wait = _held_by(video_id, token)
            if wait is not None:  # never acknowledged away: look again once it can be stale
                logger.warning("held by an earlier run of this delivery; checking again", extra={"delay": wait})
                raise self.retry(args=[video_id], kwargs={"recheck": True}, countdown=0, delay_seconds=int(wait) + 1)
            logger.info("nothing to do", extra={"reason": _skip_reason(video_id), "retries": request.retries})
            return None
        logger.info("claimed", extra={"state": Status.PROCESSING.value, "retries": request.retries})
        try:
            flask_app = current_app._get_current_object()  # type: ignore[attr-defined]  # a proxy's target
            with Heartbeat(flask_app, video_id, token, config.HEARTBEAT_SECONDS) as beat, runner.owned(token):
                return VideoJob(video_id, token, beat.lost, suspect).run()
        except JobLost:  # FFmpeg is stopped and the scratch directory removed on the way out
            db.session.rollback()
            JOBS.labels("stopped").inc()
            logger.warning("stopped: the video is no longer this job's", extra={"reason": _skip_reason(video_id)})
        except SystemExit:  # billiard's answer to SIGTERM in a pool process: the job is being stopped
            _release(video_id, token)
            JOBS.labels("handed_back").inc()
            logger.warning("interrupted; row handed back", extra={"state": Status.QUEUED.value})
            raise
        except PermanentError as exc:
            _fail(video_id, token, exc.code, exc.message, exc.original_key)
        except SoftTimeLimitExceeded:  # the whole task's wall limit: slow may mean a busy host, as for FFmpeg's
            db.session.rollback()
            if suspect != TIME_LIMIT:
                _try_again(self, video_id, token, HostFault(TIME_LIMIT, "the task's soft time limit"))
            else:
                limit = config.TASK_SOFT_TIME_LIMIT
                _fail(video_id, token, "timed_out", f"Processing took longer than {limit}s, twice.")
        except Exception as exc:
            db.session.rollback()
            if not is_transient(exc):
                logger.exception("internal error")
                _fail(video_id, token, "internal_error", "An internal error stopped processing; it has been logged.")
                raise
            _try_again(self, video_id, token, exc)
        return None


def _try_again(task: Task, video_id: str, token: str, exc: Exception) -> None:
    """Retry after a passing fault, with backoff (a ``HostFault`` carries its reason); past the retries, fail."""
    request, config = task.request, get_settings()
    if request.retries >= config.TASK_MAX_RETRIES:
        logger.error("giving up", extra={"error": repr(exc)})
        _fail(video_id, token, "retries_exhausted", "Gave up after repeated passing faults.")
        return
    delay = backoff(request.retries, config.TASK_RETRY_BACKOFF_MAX)
    logger.warning("transient error; will retry", extra={"error": repr(exc), "delay": delay})
    # The row waits as `retrying` (the sweeper leaves it until the retry is overdue); SQS holds
    # the retry's message for `delay` seconds (DelaySeconds): no worker keeps it meanwhile.
    step(jobs.wait_retry(video_id, token, delay))
    RETRIES.labels("host" if isinstance(exc, HostFault) else "transient").inc()
    again = {"suspect": exc.reason} if isinstance(exc, HostFault) else {}
    raise task.retry(args=[video_id], kwargs=again, exc=exc, countdown=0, delay_seconds=delay) from exc
