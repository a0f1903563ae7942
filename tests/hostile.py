"""Craft hostile media files for security tests: FFmpeg test sources plus byte-level MP4 rewriting, nothing downloaded.

Each generator writes ``path`` and returns it. The MP4 ones start from a tiny real clip (``make_clip``) and rewrite its
boxes, so the files look valid to a casual reader while their headers lie about size, rate, count or location.
"""

from __future__ import annotations

import base64
import os
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.clips import make_clip

_CONTAINERS = frozenset({b"moov", b"trak", b"mdia", b"minf", b"stbl", b"dinf", b"edts"})
_FFMPEG = ("ffmpeg", "-hide_banner", "-loglevel", "error", "-y")


@dataclass
class _Box:
    """One ISO-BMFF box: a leaf keeps its payload, a container its children."""

    kind: bytes
    payload: bytes = b""
    children: list[_Box] = field(default_factory=list)


def _parse(data: bytes, start: int = 0, end: int | None = None) -> list[_Box]:
    """Split ``data[start:end]`` into boxes (32-bit sizes, 64-bit largesize when size is 1, size 0 runs to the end)."""
    end = len(data) if end is None else end
    boxes: list[_Box] = []
    while start + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, start)
        header = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", data, start + 8)
            header = 16
        elif size == 0:
            size = end - start
        if size < header or start + size > end:
            raise ValueError(f"bad {kind!r} box at offset {start}")
        if kind in _CONTAINERS:
            boxes.append(_Box(kind, children=_parse(data, start + header, start + size)))
        else:
            boxes.append(_Box(kind, data[start + header : start + size]))
        start += size
    return boxes


def _dump(boxes: list[_Box]) -> bytes:
    """Serialise boxes, recomputing every size (largesize only when a box outgrows 32 bits)."""
    out = bytearray()
    for box in boxes:
        body = _dump(box.children) if box.kind in _CONTAINERS else box.payload
        if len(body) + 8 <= 0xFFFFFFFF:
            out += struct.pack(">I4s", len(body) + 8, box.kind)
        else:
            out += struct.pack(">I4sQ", 1, box.kind, len(body) + 16)
        out += body
    return bytes(out)


def _find(boxes: list[_Box], path: str) -> _Box:
    """Return the first box along a slash-separated path such as ``moov/trak/mdia/minf/stbl``."""
    box = None
    for name in path.split("/"):
        box = next((b for b in boxes if b.kind == name.encode()), None)
        if box is None:
            raise KeyError(path)
        boxes = box.children
    assert box is not None
    return box


def _full(*words: int) -> bytes:
    """A full box payload: version 0, flags 0, then big-endian 32-bit words."""
    return struct.pack(f">I{len(words)}I", 0, *words)


def _retime(box: _Box, duration: int, timescale: int | None = None) -> None:
    """Rewrite an mvhd, mdhd or tkhd as version 1 with a new 64-bit duration (and timescale for mvhd/mdhd)."""
    p, n = box.payload, 8 if box.payload[0] == 1 else 4
    ctime, mtime, pos = p[4 : 4 + n], p[4 + n : 4 + 2 * n], 4 + 2 * n
    middle = p[pos : pos + (8 if box.kind == b"tkhd" else 4)]  # track id + reserved, or timescale
    rest = p[pos + len(middle) + n :]
    if timescale is not None:
        middle = struct.pack(">I", timescale)
    box.payload = b"\x01" + p[1:4] + ctime.rjust(8, b"\0") + mtime.rjust(8, b"\0") + middle
    box.payload += struct.pack(">Q", duration) + rest


def _samples(data: bytes, stbl: _Box) -> list[bytes]:
    """Return the bytes of every sample of a track, following its stsz, stsc and stco tables."""
    stsz = _find(stbl.children, "stsz").payload
    const, count = struct.unpack_from(">II", stsz, 4)
    sizes = [const] * count if const else list(struct.unpack_from(f">{count}I", stsz, 12))
    stco = _find(stbl.children, "stco").payload
    offsets = struct.unpack_from(f">{struct.unpack_from('>I', stco, 4)[0]}I", stco, 8)
    stsc = _find(stbl.children, "stsc").payload
    runs = [struct.unpack_from(">III", stsc, 8 + 12 * i) for i in range(struct.unpack_from(">I", stsc, 4)[0])]
    out: list[bytes] = []
    for chunk, offset in enumerate(offsets, 1):
        per_chunk = next(per for first, per, _ in reversed(runs) if first <= chunk)
        for _ in range(per_chunk):
            size = sizes[len(out)]
            out.append(data[offset : offset + size])
            offset += size
    return out


def _pad(sample: bytes, size: int) -> bytes:
    """Grow a length-prefixed H.264 sample to ``size`` bytes with a filler-data NAL (type 12), which decoders skip."""
    nal = size - len(sample) - 4
    if nal < 2:
        raise ValueError("no room for a filler NAL")
    return sample + struct.pack(">I", nal) + b"\x0c" + b"\xff" * (nal - 2) + b"\x80"


def _lying_mp4(path: Path, clip: Path, *, count: int, timescale: int, delta: int, keep: int | None = None) -> Path:
    """Rewrite ``clip``'s video track to declare ``count`` samples of ``delta`` ticks at ``timescale``.

    The real samples (the first ``keep``) are padded to one constant size so a single stsz size, one stts run, one
    stsc run and one chunk offset describe all ``count`` samples; those past the real ones lie beyond the end of
    the file. The edit list and sync-sample table are dropped; moov is written before mdat.
    """
    data = clip.read_bytes()
    top = _parse(data)
    moov = _find(top, "moov")
    trak = _find(moov.children, "trak")
    stbl = _find(trak.children, "mdia/minf/stbl")
    real = _samples(data, stbl)[:keep]
    size = max(map(len, real)) + 8
    media = b"".join(_pad(s, size) for s in real)

    ms = count * delta * 1000 // timescale
    _retime(_find(moov.children, "mvhd"), ms, 1000)
    _retime(_find(trak.children, "tkhd"), ms)
    _retime(_find(trak.children, "mdia/mdhd"), count * delta, timescale)
    trak.children = [b for b in trak.children if b.kind != b"edts"]
    moov.children = [b for b in moov.children if b.kind in (b"mvhd", b"trak")][:2]
    stsd = _find(stbl.children, "stsd")

    def build(offset: int) -> bytes:
        stbl.children = [
            stsd,
            _Box(b"stts", _full(1, count, delta)),
            _Box(b"stsc", _full(1, 1, count, 1)),
            _Box(b"stsz", _full(size, count)),
            _Box(b"stco", _full(1, offset)),
        ]
        return _dump([_find(top, "ftyp"), moov])

    head = build(0)
    head = build(len(head) + 8)  # the chunk starts right after the mdat header
    path.write_bytes(head + _dump([_Box(b"mdat", media)]))
    return path


def index_bomb(path: Path, samples: int = 85_000_000) -> Path:
    """A ~5 KB MP4 whose tables declare ``samples`` samples at 30 fps: FFmpeg's mov demuxer builds a 24-byte index
    entry for each (85M -> ~2 GB) before reading any media."""
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(Path(tmp) / "seed.mp4", 64, 64, 0.1, audio=False, fps=10)
        return _lying_mp4(path, clip, count=samples, timescale=30, delta=1, keep=1)


def frame_bomb(path: Path, *, width: int = 7680, height: int = 4320, fps: int = 100_000, seconds: int = 20) -> Path:
    """A few-MB MP4 declaring ``fps`` frames per second of ``width`` x ``height`` for ``seconds`` (2M 8K frames by
    default); only the first two frames are real intra frames, the rest lie past the end of the file."""
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(
            Path(tmp) / "seed.mp4", width, height, 0.2, audio=False, fps=10, extra=("-g", "1", "-crf", "45")
        )
        return _lying_mp4(path, clip, count=fps * seconds, timescale=fps, delta=1)


def resolution_switch(path: Path, *, small: tuple[int, int] = (640, 480), big: tuple[int, int] = (8192, 8192)) -> Path:
    """An H.264 MP4 whose header (avcC) and first 2 s say ``small`` but whose last frame carries an in-band SPS for
    ``big``: probing reports the small size, decoding ends with a huge frame."""
    with tempfile.TemporaryDirectory() as tmp:
        first = make_clip(Path(tmp) / "a.h264", *small, 2, audio=False, fps=25)
        second = make_clip(Path(tmp) / "b.h264", *big, 0.04, audio=False, fps=25, extra=("-crf", "51"))
        joined = Path(tmp) / "joined.h264"
        joined.write_bytes(first.read_bytes() + second.read_bytes())
        argv = [*_FFMPEG, "-f", "h264", "-framerate", "25", "-i", str(joined), "-c", "copy", str(path)]
        subprocess.run(argv, check=True)
    return path


def _m3u8(path: Path, url: str) -> Path:
    """Write a one-segment VOD HLS playlist naming ``url``."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:10", "#EXT-X-MEDIA-SEQUENCE:0"]
    path.write_text("\n".join([*lines, "#EXTINF:10.0,", url, "#EXT-X-ENDLIST", ""]))
    return path


def hls_playlist(path: Path, target: Path) -> Path:
    """An HLS playlist (whatever ``path``'s suffix) whose one segment is the local file ``file://{target}``."""
    return _m3u8(path, f"file://{Path(target).absolute()}")


def http_playlist(path: Path, url: str = "http://127.0.0.1:9/x.ts") -> Path:
    """An HLS playlist whose segment is fetched over HTTP (port 9, discard: nothing answers)."""
    return _m3u8(path, url)


def data_playlist(path: Path, target: Path) -> Path:
    """An HLS playlist carrying ``target``'s bytes inline as a ``data:`` URI segment."""
    return _m3u8(path, "data:video/mp2t;base64," + base64.b64encode(Path(target).read_bytes()).decode())


def concat_playlist(path: Path, target: Path) -> Path:
    """An ffconcat script naming ``target`` (absolute path, quoted for the concat demuxer)."""
    quoted = str(Path(target).absolute()).replace("'", "'\\''")
    path.write_text(f"ffconcat version 1.0\nfile '{quoted}'\n")
    return path


def _alias(path: Path, target: Path) -> bytes:
    """A QuickTime 'alis' data-reference entry (flags 0: media elsewhere) that FFmpeg resolves to ``target``.

    FFmpeg's mov demuxer rebuilds the name relative to the referencing file: up ``nlvl_from - 1`` directories,
    then the last ``nlvl_to`` components of the stored absolute path.
    """
    src, dst = os.path.abspath(path), os.path.abspath(target)
    parts = os.path.relpath(dst, os.path.dirname(src)).split(os.sep)
    ups = parts.count(os.pardir)
    name = os.path.basename(dst).encode()[:63]
    body = bytearray(150)  # fixed part of the alias record, after the entry's size/type/flags
    body[0:10] = b"\0\0\0\0" + struct.pack(">HHH", 150, 2, 0)  # creator, record size, version, kind (file)
    body[10] = 0  # volume name length (empty: no prefix to strip from the path)
    body[50] = len(name)
    body[51 : 51 + len(name)] = name
    body[130:134] = struct.pack(">HH", ups + 1, len(parts) - ups)  # nlvl_from, nlvl_to
    record = dst.encode() + b"\0" * (len(dst.encode()) & 1)
    body += struct.pack(">hH", 2, len(dst.encode())) + record + struct.pack(">hH", -1, 0)
    return struct.pack(">I4sI", 12 + len(body), b"alis", 0) + bytes(body)


def mov_external_reference(path: Path, target: Path) -> Path:
    """A MOV/MP4 (suffix picks) whose video track's only data reference is an alias to ``target``, not
    self-contained: with ``-enable_drefs 1`` FFmpeg opens ``target`` and reads the track's samples from it."""
    make_clip(path, 64, 64, 0.2, audio=False, fps=10)
    top = _parse(path.read_bytes())
    if top[-1].kind != b"moov":
        raise ValueError("expected moov last, so resizing it moves no chunk offsets")
    dref = _find(top, "moov/trak/mdia/minf/dinf/dref")
    dref.payload = _full(1) + _alias(path, target)
    path.write_bytes(_dump(top))
    return path
