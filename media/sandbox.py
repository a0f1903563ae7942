"""FFmpeg as a sandboxed dependency: what a child may open, and how much it may use.

Every ffprobe and ffmpeg child that reads a user's file gets input options that pin the
demuxer to the allowed containers, allow the ``file`` protocol only (no network, no
playlists that name other files), keep MOV external references off and cap the size of a
decoded picture. Every child runs under an address-space and a CPU-time limit, a wall
timeout, a bounded thread count and an environment without the parent's secrets.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from media.jail import Jail

MiB = 1024**2
# Short container names (what ``media.probe.container_name`` returns) to libavformat demuxers.
DEMUXERS = {
    "mp4": "mov",
    "mov": "mov",
    "mkv": "matroska",
    "avi": "avi",
    "ts": "mpegts",
    "flv": "flv",
    "ogg": "ogg",
}
# The only variables an FFmpeg child sees: no credentials, no proxies, no FFREPORT.
SAFE_ENV = ("PATH", "LANG", "LC_ALL", "TZ")


def share(jobs: int, cores: int | None = None) -> int:
    """Return one FFmpeg's threads when ``jobs`` share the host's cores: cores ÷ jobs, at least 1, at most 16.

    ``make bench`` measured both ends: a lone job on an idle host publishes soonest on every
    core (bench.job), and a backlog drains fastest with single-threaded FFmpegs, one more
    than cores (bench.concurrency).
    """
    return max(1, min((cores or os.cpu_count() or 2) // max(jobs, 1), 16))


def is_relay(source: str) -> bool:
    """Return whether ``source`` is a URL of the worker's relay: plain HTTP to this host's loopback address."""
    url = urlsplit(source)
    return url.scheme == "http" and url.hostname == "127.0.0.1" and url.username is None


class UnknownContainer(ValueError):
    """A configured container has no known demuxer."""


def demuxers(formats: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Return the demuxer names for the allowed container names, in order, without repeats."""
    names: list[str] = []
    for fmt in formats:
        if fmt not in DEMUXERS:
            raise UnknownContainer(f"no demuxer known for container {fmt!r} (known: {', '.join(sorted(DEMUXERS))})")
        if DEMUXERS[fmt] not in names:
            names.append(DEMUXERS[fmt])
    return tuple(names)


@dataclass(frozen=True)
class Resources:
    """Resources one child process may use; ``None`` means no limit."""

    memory_bytes: int | None = None
    cpu_seconds: int | None = None
    wall_seconds: float | None = None


def child_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the environment for an FFmpeg child: the few harmless variables, nothing else."""
    environ = os.environ if environ is None else environ
    env = {name: environ[name] for name in SAFE_ENV if name in environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    # Each glibc malloc arena reserves 64 MiB of address space; few arenas keep the limit about real memory.
    env["MALLOC_ARENA_MAX"] = "2"
    return env


@dataclass(frozen=True)
class Sandbox:
    """Input restrictions and resource limits for FFmpeg children, from settings."""

    formats: tuple[str, ...] = ("mp4", "mov")
    max_pixels: int = 7680 * 4320
    threads: int = 2
    share_cores: bool = False  # ``threads`` is set per encode by ``for_jobs`` (FFMPEG_THREADS=0)
    probe_memory: int = 512 * MiB
    probe_seconds: float = 30.0
    encode_memory: int = 1536 * MiB
    timeout_base: float = 60.0
    timeout_per_second: float = 10.0
    cpu_per_second: float = 20.0
    jail: bool = False  # every child in media.jail (MEDIA_JAIL); off for a sandbox made without settings

    def confine(
        self,
        scratch: str | os.PathLike[str] | None = None,
        read: tuple[Any, ...] = (),
        relay: tuple[str, int] | None = None,
    ) -> Jail | None:
        """Return one child's jail (``scratch`` writable, ``read`` readable, ``relay`` reachable); None when off."""
        if not self.jail:
            return None
        from media.jail import Jail

        return Jail(str(scratch) if scratch else None, tuple(str(path) for path in read if path), relay)

    def for_jobs(self, jobs: int) -> Sandbox:
        """Return the sandbox for an encode that starts while ``jobs`` run on this host (itself included)."""
        return replace(self, threads=share(jobs)) if self.share_cores else self

    @property
    def demuxers(self) -> tuple[str, ...]:
        return demuxers(self.formats)

    def input_options(self, container: str | None = None, source: str = "") -> dict[str, Any]:
        """Return the options for a user's file as an input (before ``-i``).

        ``source`` is what FFmpeg opens: a path reads over the ``file`` protocol only; the
        worker's loopback relay (``http://127.0.0.1:…``, tasks/relay.py) over ``http`` and
        ``tcp`` only, and nothing the file names can be opened either way.

        With ``container`` known (the worker probed it first) the demuxer is forced to
        exactly that one. Otherwise FFmpeg detects the format from the first bytes and
        refuses one not on the whitelist before it parses anything else ("Format not on
        whitelist"): a playlist never gets to open what it names. The MOV option
        ``enable_drefs`` can only be given when the mov demuxer is the only one allowed:
        another demuxer would reject it as unknown (and it is off by default).
        """
        names = (DEMUXERS[container],) if container in DEMUXERS else self.demuxers
        protocols = "http,tcp" if is_relay(source) else "file"
        options: dict[str, Any] = {"format_whitelist": ",".join(names), "protocol_whitelist": protocols}
        if container in DEMUXERS:
            options["f"] = names[0]
        if names == ("mov",):
            options["enable_drefs"] = 0
        options.update(max_pixels=self.max_pixels, threads=self.decoder_threads())
        return options

    def decoder_threads(self) -> int:
        """Return the decoder's threads: libavcodec's own default (cores + 1 for frame threads), from ``threads``."""
        return self.threads + 1 if self.threads > 1 else 1

    def output_options(self, codec: str = "libx264") -> dict[str, Any]:
        """Return the encoder's thread bound: x264's own default (1.5 per core) taken from ``threads``, not the host.

        SVT-AV1 ignores ``-threads``: its own ``lp`` (logical processors) bounds its threads and its memory.
        """
        if codec == "libsvtav1":
            return {"svtav1-params": f"lp={self.threads}"}
        return {"threads": max(1, self.threads * 3 // 2)}

    def global_options(self) -> list[str]:
        """Return global FFmpeg arguments: filter graphs get ``threads`` threads, not one per host core."""
        return ["-filter_threads", str(self.threads), "-filter_complex_threads", str(self.threads)]

    def probe_limits(self) -> Resources:
        """Return the limits of an ffprobe child."""
        seconds = self.probe_seconds
        return Resources(memory_bytes=self.probe_memory, cpu_seconds=max(int(seconds), 1), wall_seconds=seconds)

    def encode_limits(self, content_seconds: float) -> Resources:
        """Return the limits of an ffmpeg child working on ``content_seconds`` of video."""
        wall = self.timeout_base + self.timeout_per_second * max(content_seconds, 0)
        cpu = self.timeout_base + self.cpu_per_second * max(content_seconds, 0)
        return Resources(memory_bytes=self.encode_memory, cpu_seconds=int(cpu), wall_seconds=wall)
