"""Tell from a file's first bytes whether it can be one of the allowed containers.

A cheap first look for uploads that reach S3 without passing the web tier (direct uploads):
their first bytes are read with a ranged GET, so a file that is plainly not a video is
refused at once, without a worker downloading it. It only ever refuses; what it lets through
is probed in the sandbox by the worker, with the same rules as a form upload.
"""

from __future__ import annotations

from collections.abc import Iterable

HEAD_BYTES = 64 * 1024
# ISO base media (MP4, MOV, 3GP): the file is a sequence of boxes, [size:4][type:4]; these may come first.
BMFF_FIRST_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid", b"styp"}
# The containers of media.sandbox.DEMUXERS by their first bytes.
MAGIC = {"mkv": b"\x1a\x45\xdf\xa3", "avi": b"RIFF", "ts": b"\x47", "flv": b"FLV", "ogg": b"OggS"}
BMFF = {"mp4", "mov"}


def _is_bmff(head: bytes) -> bool:
    """Return whether ``head`` starts like ISO base media: a plausible first box of a known type."""
    if len(head) < 8 or head[4:8] not in BMFF_FIRST_BOXES:
        return False
    size = int.from_bytes(head[:4], "big")
    return size in (0, 1) or size >= 8  # 0: to the end of the file; 1: a 64-bit size follows


def may_be(head: bytes, formats: Iterable[str]) -> bool:
    """Return False when ``head`` (the file's first bytes) can be none of ``formats``.

    A format this module knows no signature for is given the benefit of the doubt.
    """
    for name in formats:
        if name in BMFF:
            if _is_bmff(head):
                return True
        elif name in MAGIC:
            if head.startswith(MAGIC[name]):
                return True
        else:
            return True
    return False
