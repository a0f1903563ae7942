"""The optimize task: once a video is published, smaller renditions at its quality, then one move to them.

The job that publishes stays as fast as it was (x264 ``veryfast``). Then this task, on its own
queue (``OPTIMIZE_QUEUE_NAME``), reads the original again and makes an H.264 rendition at a
slower preset and, with ``OPTIMIZE=h264+av1``, an AV1 one (SVT-AV1). Each gets the highest CRF
whose SSIM, on a few seconds of this clip, is at least what the published rendition got on the
same frames (media/quality.py). When both are in S3, one move (``optimize.done``) makes the
H.264 file the published one and records the AV1 file; the fast file is deleted after it.

Its workers read only this queue, at idle CPU priority, beside the video workers: the kernel
gives them only the CPU that publishing leaves (docs/architecture.md). A failure, a cancel or
a lost worker here never touches the published video.
"""

from __future__ import annotations

import contextlib
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from celery import Task, shared_task
from celery.utils.log import get_task_logger
from flask import current_app

from celeryconfig import OPTIMIZE_TASK
from domain import media, optimize
from domain.extensions import db, get_settings
from domain.models import Video
from domain.storage import Storage, get_storage, rendition_key
from media import quality, runner
from media.pipeline import OwnStepFailed, Pipeline, TruncatedInput
from media.probe import MediaInfo, ProbeError, probe
from media.profile import Profile
from media.runner import FFmpegError
from ops.logs import log_context
from ops.prometheus import OPTIMIZE_JOBS, OPTIMIZE_SECONDS
from tasks.errors import backoff, is_missing, is_transient
from tasks.process import Heartbeat, JobLost, pipeline, step
from tasks.relay import Relay
from tasks.scratch import job_dir

logger = get_task_logger(__name__)
# An idle-priority FFmpeg waits for the CPU whenever publishing needs it: its wall limit is this many
# times the publishing one (its CPU-time limit, which counts only work done, stays as it is).
IDLE_WALL_FACTOR = 10
WINDOW_SHARE = 5  # percent of the stage's progress: the probes' reference frames


@dataclass(frozen=True)
class Search:
    """Where a codec's CRF search looks: the range, the first guess and the step (from ``bench.optimize``)."""

    low: int
    high: int
    guess: int
    step: int


def searches(fast: Profile) -> dict[str, Search]:
    """Return each codec's CRF search, around where the reference inputs landed (docs/benchmarks.md)."""
    return {
        "libx264": Search(low=fast.crf, high=fast.crf + 12, guess=fast.crf + 3, step=3),
        "libsvtav1": Search(low=20, high=60, guess=46, step=6),
    }


def renditions(config: Any) -> dict[str, Profile]:
    """Return the renditions ``OPTIMIZE`` asks for, by name, with their codec and preset (the CRF is searched)."""
    fast = media.output(config)
    wanted = {"h264": replace(fast, preset=config.OPTIMIZE_H264_PRESET)}
    if config.OPTIMIZE == "h264+av1":
        wanted["av1"] = replace(fast, codec="libsvtav1", preset=str(config.OPTIMIZE_AV1_PRESET))
    return wanted


def _cpu_seconds() -> float:
    """Return the CPU time of this process's finished children (every FFmpeg): differences measure a stage."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


class StageFailed(Exception):
    """The stage can't succeed for this video (its file, or FFmpeg on it): record it; the published video stays."""


class OptimizeJob:
    """One delivery of one video's optimize stage, holding it under ``token``."""

    def __init__(self, video_id: str, token: str, lost: Any) -> None:
        self.video_id, self.token, self.lost = video_id, token, lost
        self.written: list[str] = []  # this attempt's keys: removed unless they are published
        self._last = 0.0

    def progress(self, percent: int) -> None:
        """Record progress, at most once a second; stop (raise JobLost) once the stage is no longer ours."""
        if self.lost.is_set():
            raise JobLost()
        if time.monotonic() - self._last >= 1.0 or percent >= 100:
            step(optimize.beat(self.video_id, self.token, percent))
            self._last = time.monotonic()

    def _reporter(self, start: float, span: float) -> Callable[[float], None]:
        """Return a callback that reports a fraction of one encode as the stage's percentage."""
        return lambda fraction: self.progress(int(start + span * fraction))

    @contextlib.contextmanager
    def cleanup(self, storage: Storage) -> Iterator[None]:
        """Remove what this attempt wrote to S3 when it does not end published."""
        published = False
        try:
            yield
            published = True
        finally:
            if not published and self.written:
                for key in self.written:
                    with contextlib.suppress(Exception):  # the sweeper's orphan check removes what this misses
                        storage.delete(key)
                logger.info("renditions removed", extra={"keys": self.written})

    def _encode(
        self, relay: Relay, info: MediaInfo, workdir: Path, wanted: dict[str, Profile]
    ) -> tuple[dict[str, Path], dict[str, dict[str, Any]]]:
        """Find each rendition's CRF on a window of the clip, then encode it whole; return the files and the record."""
        config = get_settings()
        fast = media.output(config)
        sandbox = pipeline().sandbox.for_jobs(1)  # idle priority: every core publishing leaves
        sandbox = replace(sandbox, timeout_per_second=sandbox.timeout_per_second * IDLE_WALL_FACTOR)
        cpu = _cpu_seconds()
        window = quality.window(
            relay.url, info, workdir / "window", fast, sandbox, config.OPTIMIZE_PROBE_SECONDS, relay.socket
        )
        target = window.ssim(fast)
        self.progress(WINDOW_SHARE)
        files: dict[str, Path] = {}
        record: dict[str, dict[str, Any]] = {}
        share = (100 - WINDOW_SHARE - 5) / len(wanted)
        for n, (name, profile) in enumerate(wanted.items()):
            start = WINDOW_SHARE + n * share
            search = searches(fast)[profile.codec]
            choice = window.choose(profile, target, search.low, search.high, search.guess, search.step)
            self.progress(int(start + share * 0.3))
            chosen = replace(profile, crf=choice.crf)
            outputs = Pipeline(chosen, pipeline().cache_dir, sandbox).run(
                relay.url,
                info,
                _fresh(workdir / name),
                self._reporter(start + share * 0.3, share * 0.7),
                1,
                relay.socket,
                poster=False,
            )
            files[name] = outputs.video
            used, cpu = _cpu_seconds() - cpu, _cpu_seconds()
            record[name] = {
                "codec": profile.codec,
                "preset": profile.preset,
                "crf": choice.crf,
                "ssim": round(choice.ssim, 5),
                "target_ssim": round(choice.target, 5),
                "probes": choice.probes,
                "bytes": outputs.video.stat().st_size,
                "cpu_seconds": round(used, 2),
            }
            logger.info("rendition made", extra={"rendition": name, **record[name]})
        return files, record

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
        with self.cleanup(storage), job_dir(self.video_id, config.WORKER_TMP_DIR) as tmp:
            try:
                relay = Relay(storage, original, Path(tmp) / "original")
            except Exception as exc:
                if is_missing(exc):
                    raise StageFailed(f"The original {original} is not in S3.") from exc
                raise
            with relay:
                try:
                    with relay.checked():
                        info = probe(relay.url, pipeline().sandbox, relay.socket)
                        files, record = self._encode(relay, info, Path(tmp), wanted)
                except (ProbeError, FFmpegError, OwnStepFailed, TruncatedInput) as exc:
                    if self.lost.is_set():
                        raise JobLost() from exc
                    if isinstance(exc, (ProbeError, FFmpegError)) and exc.blame == runner.HOST:
                        raise  # the host's fault: retried
                    raise StageFailed(f"FFmpeg could not make a rendition: {exc}") from exc
            self.progress(95)
            keys = {name: rendition_key(self.video_id, name, self.token) for name in files}
            for name, path in files.items():
                self.written.append(keys[name])
                storage.upload_file(path, keys[name], "video/mp4")
            if not step(optimize.done(self.video_id, self.token, published, keys["h264"], keys.get("av1"), record)):
                logger.warning("the stage is no longer this job's; renditions not published")
                return None
            self.written.clear()  # published: no longer this attempt's to remove
        with contextlib.suppress(Exception):  # an orphan only costs storage: ops/orphans.py finds it
            storage.delete(published)
        seconds = time.monotonic() - started
        OPTIMIZE_JOBS.labels(optimize.OPTIMIZED).inc()
        OPTIMIZE_SECONDS.observe(seconds)
        sizes = {f"{name}_bytes": value["bytes"] for name, value in record.items()}
        logger.info("optimized", extra={"state": optimize.OPTIMIZED, "seconds": round(seconds, 2), **sizes})
        return keys["h264"]


def _fresh(path: Path) -> Path:
    path.mkdir(exist_ok=True)
    return path


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
def optimize_video(self: Task, video_id: str, recheck: bool = False) -> str | None:
    """Optimize one published video by id; a delivery for a stage that is not waiting is acknowledged and skipped.

    ``recheck``: an earlier run of this very delivery held the stage; take it only once it is stale.
    """
    request, config = self.request, get_settings()
    token = f"{request.id}:{request.retries}"
    previous = f"{request.id}:{request.retries - 1}" if request.retries else None
    stale_after = config.STALE_AFTER_SECONDS
    with log_context(video_id=video_id, task_id=request.id, stage="optimize"):
        dead = None if recheck else previous
        if step(optimize.give_up(video_id, stale_after, config.MAX_ATTEMPTS, dead=dead)):
            OPTIMIZE_JOBS.labels(optimize.FAILED).inc()
            logger.error("optimize failed: its worker died too often; the published rendition stays")
            return None
        if not step(optimize.claim(video_id, token, None if recheck else previous, stale_after)):
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
            ):
                return OptimizeJob(video_id, token, beat.lost).run()
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
        except Exception as exc:
            db.session.rollback()
            if not is_transient(exc) and not isinstance(exc, (FFmpegError, ProbeError)):
                logger.exception("optimize: internal error")
                _end(video_id, token, "An internal error stopped the optimize stage; it has been logged.")
                return None
            if request.retries >= config.TASK_MAX_RETRIES:
                _end(video_id, token, f"Gave up after repeated passing faults: {exc}")
                return None
            delay = backoff(request.retries, config.TASK_RETRY_BACKOFF_MAX)
            logger.warning("optimize: transient error; will retry", extra={"error": repr(exc), "delay": delay})
            raise self.retry(args=[video_id], exc=exc, countdown=0, delay_seconds=delay) from exc
        return None
