"""Cancel with a real worker: the owner's POST /cancel stops a running encode within seconds."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import Worker, wait_for
from tests.test_reliability import (
    Stack,
    encode_frozen,
    ffmpeg_running,
    scratch_left,
    stack,  # noqa: F401  (a fixture)
)

pytestmark = pytest.mark.e2e
SETTINGS = {"SQS_VISIBILITY_TIMEOUT": "30", "HEARTBEAT_SECONDS": "2", "STALE_AFTER_SECONDS": "10"}


def test_cancel_stops_a_running_encode_and_leaves_nothing(
    stack: Callable[..., Stack],  # noqa: F811
    start_worker: Callable[..., Worker],
    clip: Callable,
    base_env: dict,
) -> None:
    s = stack(SETTINGS)
    a = start_worker("a", s.env)
    video_id = s.upload(clip("portrait.mp4")).json["video_id"]
    # Frozen mid-encode: still running whatever the machine's speed, and silent like a stalled decode,
    # so the stop cannot wait for FFmpeg's next progress line.
    with encode_frozen(s, video_id):
        assert ffmpeg_running(video_id) and s.row(video_id).status == "processing"
        answer = s.client.post(f"/api/videos/{video_id}/cancel", headers=s.headers)
        assert answer.status_code == 200 and answer.json["status"] == "cancelled"
        wait_for(lambda: not ffmpeg_running(video_id), timeout=10, interval=0.05)  # frozen: only the cancel stops it
    wait_for(lambda: a.lines("stopped: the video is no longer", video_id, "reason=cancelled"), timeout=10)
    assert scratch_left(base_env, video_id) == []
    row = s.row(video_id)
    assert (row.status, row.processed_key, row.claimed_by) == ("cancelled", None, None)
    assert s.keys(video_id) == [f"originals/{video_id}/portrait.mp4"], "no processed outputs"
    assert a.lines("msg=processed", video_id) == []
