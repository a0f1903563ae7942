"""Parse ``ffmpeg -progress`` output into seconds done and a percentage."""

from __future__ import annotations


def out_time_seconds(line: str) -> float | None:
    """Return the seconds encoded so far from one ``-progress`` line, else None."""
    key, sep, value = line.strip().partition("=")
    if not sep or value in ("", "N/A"):
        return None
    try:
        if key in ("out_time_us", "out_time_ms"):  # ffmpeg writes microseconds in both
            return max(int(value), 0) / 1_000_000
        if key == "out_time":
            hours, minutes, seconds = value.lstrip("-").split(":")
            return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None
    return None


def percent(done: float, total: float) -> int:
    """Return ``done`` of ``total`` as a whole percentage clamped to 0..100."""
    if total <= 0:
        return 0
    return max(0, min(100, int(done * 100 / total)))
