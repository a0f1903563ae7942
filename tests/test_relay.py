"""The worker's relay: an S3 object served to FFmpeg over loopback HTTP while it downloads (moto server)."""

from __future__ import annotations

import os
import random
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError, EndpointConnectionError

from config import load_settings
from domain.storage import Storage, aws_client
from media.probe import probe
from media.sandbox import Sandbox, is_relay
from tasks.errors import is_missing, is_transient
from tasks.relay import Relay
from tests.clips import make_clip, moov_before_mdat

KiB = 1024
CHUNK = 64 * KiB


@pytest.fixture(scope="module")
def storage(aws_endpoint: str) -> Storage:
    settings = load_settings({"APP_ENV": "testing", "AWS_ENDPOINT_URL": aws_endpoint})
    client = aws_client("s3", settings)
    bucket = f"relay-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    return Storage(client, bucket)


@pytest.fixture(scope="module")
def blob(storage: Storage) -> bytes:
    data = os.urandom(40 * CHUNK + 123)  # 41 chunks, the last one short
    storage.client.put_object(Bucket=storage.bucket, Key="blob", Body=data)
    return data


def get(relay: Relay, first: int | None = None, last: int | None = None) -> requests.Response:
    headers = {} if first is None else {"Range": f"bytes={first}-{'' if last is None else last}"}
    return requests.get(relay.url, headers=headers, timeout=30)


class Counting(Storage):
    """A storage that counts the ranged GETs, and can fail them from the ``fail_after``-th on."""

    def __init__(self, storage: Storage, fail_after: int | None = None) -> None:
        super().__init__(storage.client, storage.bucket)
        self.fail_after, self.ranges = fail_after, []
        self._lock = threading.Lock()

    def read_range(self, key: str, first: int, last: int) -> Any:
        with self._lock:
            self.ranges.append((first, last))
            failing = self.fail_after is not None and len(self.ranges) > self.fail_after
        if failing:
            raise EndpointConnectionError(endpoint_url="http://s3.invalid")
        return super().read_range(key, first, last)


@pytest.fixture
def relay(storage: Storage, blob: bytes, tmp_path: Path) -> Iterator[Relay]:
    with Relay(Counting(storage), "blob", tmp_path / "original", chunk=CHUNK, window=4) as r:
        yield r


def test_ranges_are_served_byte_for_byte(relay: Relay, blob: bytes) -> None:
    whole = get(relay)
    assert whole.status_code == 200 and whole.content == blob
    rng = random.Random(7)
    for _ in range(20):
        first = rng.randrange(len(blob))
        last = min(len(blob) - 1, first + rng.randrange(3 * CHUNK))
        answer = get(relay, first, last)
        assert answer.status_code == 206, answer.status_code
        assert answer.headers["Content-Range"] == f"bytes {first}-{last}/{len(blob)}"
        assert answer.content == blob[first : last + 1]
    tail = get(relay, len(blob) - 10)
    assert tail.content == blob[-10:] and tail.headers["Accept-Ranges"] == "bytes"
    assert get(relay, len(blob)).status_code == 416


def test_only_the_token_url_is_served(relay: Relay) -> None:
    base = relay.url.rsplit("/", 1)[0]
    assert requests.get(f"{base}/other", timeout=10).status_code == 404
    assert is_relay(relay.url)


def test_a_seek_to_the_end_is_fetched_first_and_only_a_window_ahead(
    storage: Storage, blob: bytes, tmp_path: Path
) -> None:
    counting = Counting(storage)
    with Relay(counting, "blob", tmp_path / "original", chunk=CHUNK, window=4) as r:
        assert get(r, len(blob) - 100).content == blob[-100:]  # an index at the end of an MP4
        assert (40 * CHUNK, len(blob) - 1) in counting.ranges
        assert get(r, 0, CHUNK - 1).content == blob[:CHUNK]  # back to the start, as FFmpeg does
        r.close()
    fetched = {first // CHUNK for first, _ in counting.ranges}
    assert CHUNK + 100 <= r.fetched <= 4 * CHUNK + 123 < len(blob)  # what was read, and some of the window
    # The reader's chunk and a window of 4 ahead of it (once at each place it read), not all 41.
    assert fetched <= set(range(0, 4)) | {40} and len(counting.ranges) == len(fetched)
    assert not r.complete


def test_the_whole_object_lands_in_the_local_file(storage: Storage, blob: bytes, tmp_path: Path) -> None:
    path = tmp_path / "original"
    with Relay(storage, "blob", path, chunk=CHUNK, window=4) as r:
        assert get(r).content == blob  # a reader going through moves the window to the end
        assert r.complete and r.failure() is None and r.fetched == len(blob)
    assert path.read_bytes() == blob


def test_a_missing_object_fails_before_anything_starts(storage: Storage, tmp_path: Path) -> None:
    with pytest.raises(ClientError) as caught:
        Relay(storage, "no-such-key", tmp_path / "original")
    assert is_missing(caught.value)


def test_a_relay_closed_before_it_started_fetches_nothing_and_returns(
    storage: Storage, blob: bytes, tmp_path: Path
) -> None:
    counting = Counting(storage)
    r = Relay(counting, "blob", tmp_path / "original", chunk=CHUNK)
    closing = threading.Thread(target=r.close, daemon=True)
    closing.start()
    closing.join(timeout=10)
    assert not closing.is_alive()  # socketserver's shutdown() alone would wait for a serve_forever never run
    assert counting.ranges == [] and r.fetched == 0
    r.close()  # again: nothing


def test_an_s3_failure_breaks_the_answer_and_is_raised_as_itself(storage: Storage, blob: bytes, tmp_path: Path) -> None:
    failing = Counting(storage, fail_after=2)
    with Relay(failing, "blob", tmp_path / "original", chunk=CHUNK, window=4) as r:
        with pytest.raises(requests.RequestException):
            get(r)  # the answer stops short of its Content-Length
        assert isinstance(r.failure(), EndpointConnectionError) and is_transient(r.failure())
        with pytest.raises(EndpointConnectionError), r.checked():
            pass  # even a run that "succeeded" is not trusted: what it read may be short


def test_ffprobe_and_ffmpeg_read_through_the_relay_in_the_sandbox(storage: Storage, tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "clip.mp4", 640, 360, 3)  # its index (moov) after its data: a seek to the end
    assert not moov_before_mdat(clip)
    storage.client.upload_file(str(clip), storage.bucket, "clip.mp4")
    sandbox = Sandbox()
    with Relay(storage, "clip.mp4", tmp_path / "original", chunk=CHUNK) as r:
        assert sandbox.input_options(source=r.url)["protocol_whitelist"] == "http,tcp"
        info = probe(r.url, sandbox)
    assert (info.container, info.width, info.height, info.has_audio) == ("mp4", 640, 360, True)
    assert abs(info.duration - 3) < 0.1


@pytest.mark.parametrize(
    "source",
    ["/tmp/clip.mp4", "https://127.0.0.1:9/x", "http://127.0.0.2/x", "http://example.com/x", "http://u@127.0.0.1/x"],
)
def test_anything_but_the_relay_is_read_as_a_file_only(source: str) -> None:
    assert not is_relay(source)
    assert Sandbox().input_options(source=source)["protocol_whitelist"] == "file"
