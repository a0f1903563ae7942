"""Turn one local input file into the processed video and its poster."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from media import commands, runner
from media.jail import Jail
from media.probe import MediaInfo
from media.profile import Profile
from media.sandbox import Resources, Sandbox, is_relay

# Shares of the pipeline's progress taken by each step.
ENCODE_SHARE, JOIN_SHARE = 0.85, 0.10
# An encode shorter than this share of what the input's header promised means the input is cut off.
MIN_DECODED_SHARE = 0.9


class TruncatedInput(Exception):
    """The input's streams end well before its header says (a cut-off upload)."""


class OwnStepFailed(RuntimeError):
    """FFmpeg failed on the pipeline's own files (bumpers, join, poster): not the user's fault."""


def plain_file(path: Path) -> Path:
    """Return ``path`` if it is a plain file (never followed: FFmpeg wrote its folder), else fail as the file's fault.

    A compromised FFmpeg could leave a link in its scratch directory (to another job's file,
    to ``/proc/...``) for the worker, outside the jail, to upload or write through.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = 0
    if not stat.S_ISREG(mode):
        raise runner.FFmpegError([str(path)], 0, f"{path.name} is not a plain file after FFmpeg", None)
    return path


def _write_new(path: Path, text: str) -> None:
    """Write ``text`` to a new ``path`` in FFmpeg's folder: whatever is there is replaced, never written through."""
    if os.path.lexists(path):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _own(argv: list[str], limits: Resources, jail: Jail | None) -> None:
    try:
        runner.run(argv, limits=limits, jail=jail)
    except runner.FFmpegError as exc:
        raise OwnStepFailed(f"{argv[0]} failed on our own files: {exc}") from exc


@dataclass(frozen=True)
class Outputs:
    """Files produced for one video."""

    video: Path
    poster: Path | None
    duration: float


class Pipeline:
    """Encode clips with one profile; bumpers are rendered once and reused."""

    def __init__(self, profile: Profile, cache_dir: str | os.PathLike[str], sandbox: Sandbox | None = None) -> None:
        self.profile = profile
        self.cache_dir = Path(cache_dir)
        self.sandbox = sandbox or Sandbox()
        self.fingerprint = profile.fingerprint()  # reads the bumper images: once, not per video

    def bumpers(self) -> tuple[Path | None, Path | None]:
        """Return the intro and outro clips, rendering each on first use."""
        p = self.profile
        return (
            self._bumper("intro", p.intro_image, p.intro_seconds),
            self._bumper("outro", p.outro_image, p.outro_seconds),
        )

    def _bumper(self, kind: str, image: str | None, seconds: float) -> Path | None:
        if not image or seconds <= 0:
            return None
        path = self.cache_dir / f"{kind}-{self.fingerprint}.mp4"
        if not path.exists():
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".mp4", dir=self.cache_dir)
            os.close(fd)
            try:
                argv = commands.bumper_command(image, tmp, seconds, self.profile)
                _own(argv, self.sandbox.encode_limits(seconds), self.sandbox.confine(self.cache_dir, (image,)))
                os.replace(tmp, path)  # atomic: concurrent workers never see half a file
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return path

    def run(
        self,
        src: str | Path,
        info: MediaInfo,
        workdir: Path,
        on_progress: Callable[[float], None] | None = None,
        jobs: int = 1,
        relay: tuple[str, int] | None = None,
        poster: bool = True,
    ) -> Outputs:
        """Encode ``src`` (a path, or the worker's relay URL) into ``workdir``; ``on_progress`` gets a fraction 0..1.

        The user's file is read in the sandbox, with the demuxer ``info`` names forced;
        ``runner.FFmpegError`` says which limit stopped FFmpeg, if one did. ``jobs``: how many
        encodes share this host's cores now, this one included (``Sandbox.for_jobs``). In the
        jail every FFmpeg writes ``workdir`` only; ``relay`` (the relay's socket and port) is
        the encode's only way out when ``src`` is the relay's URL. Without ``poster`` (a second
        rendition of a video that has one) ``Outputs.poster`` is None.
        """
        report = on_progress or (lambda _fraction: None)
        sandbox = self.sandbox.for_jobs(jobs)
        content = min(info.duration, self.profile.max_duration) or self.profile.max_duration
        limits = sandbox.encode_limits(content)
        intro, outro = self.bumpers()
        final = workdir / "video.mp4"
        body = workdir / "body.mp4" if intro or outro else final
        still, poster_at = workdir / "poster.jpg", min(1.0, content / 2)
        decoded = [0.0]  # seconds encoded, from FFmpeg's progress: no second look at the file

        def progress(done: float) -> None:
            decoded[0] = max(decoded[0], done)
            report(ENCODE_SHARE * min(done / content, 1.0))

        source = () if is_relay(str(src)) else (src,)
        runner.run(
            commands.encode_command(
                str(src),
                str(body),
                self.profile,
                sandbox.input_options(info.container, str(src)),
                sandbox.output_options(self.profile.codec),
                sandbox.global_options(),
                poster=(str(still), poster_at) if poster else None,
            ),
            on_progress=progress,
            limits=limits,
            jail=sandbox.confine(workdir, (*source, self.profile.watermark_image), relay),
        )
        if decoded[0] < content * MIN_DECODED_SHARE - 0.5:
            raise TruncatedInput(f"the input ends after {decoded[0]:.1f}s of the {content:.1f}s its header announces")
        if body != final:
            pieces = [str(path) for path in (intro, body, outro) if path]
            listing = workdir / "pieces.txt"
            _write_new(listing, commands.concat_list(pieces))
            _own(commands.concat_command(str(listing), str(final)), limits, sandbox.confine(workdir, (self.cache_dir,)))
        report(ENCODE_SHARE + JOIN_SHARE)
        if poster and not os.path.lexists(still):  # no frame reached the poster's branch: take it from the result
            intro_length = self.profile.intro_seconds if intro else 0.0
            argv = commands.poster_command(str(final), str(still), intro_length + poster_at)
            _own(argv, limits, sandbox.confine(workdir))
        report(1.0)
        return Outputs(video=plain_file(final), poster=plain_file(still) if poster else None, duration=content)
