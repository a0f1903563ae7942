"""Direct uploads on the real stack: parts PUT to moto server through presigned URLs, a worker, FFmpeg."""

from __future__ import annotations

import gc
import hashlib
import hmac
import json
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
import requests
from flask.testing import FlaskClient
from sqlalchemy import select

from app import timing
from domain import direct, quotas
from domain.extensions import db, get_settings
from domain.models import IdempotencyKey, Video, utcnow
from domain.storage import aws_client, get_storage
from media.sniff import may_be
from ops.sweeper import sweep
from tests.clips import ffprobe, make_clip
from tests.conftest import Worker, signup_and_login, statements, unique_email
from tests.test_reliability import Stack, stack  # noqa: F401  (a fixture)

MiB = 1024**2
PART = 5 * MiB  # S3's (and moto's) least part size: a 12 MiB clip makes three parts


def start(client: FlaskClient, headers: dict[str, str], path: Path, **changes: Any) -> Any:
    body = {"title": path.stem, "filename": path.name, "size": path.stat().st_size, "content_type": "video/mp4"}
    return client.post("/api/uploads", json={**body, **changes}, headers=headers)


def put_parts(plan: dict[str, Any], path: Path, only: set[int] | None = None) -> dict[int, str]:
    """PUT the plan's parts (or ``only`` those) to S3; return their ETags."""
    etags, data = {}, path.read_bytes()
    for part in plan["parts"]:
        n = part["part_number"]
        if only is not None and n not in only:
            continue
        chunk = data[(n - 1) * plan["part_size"] : n * plan["part_size"]]
        answer = requests.put(part["url"], data=chunk, timeout=30)
        assert answer.status_code == 200, answer.text
        etags[n] = answer.headers["ETag"]
    return etags


def complete(client: FlaskClient, headers: dict[str, str], plan: dict[str, Any], etags: dict[int, str]) -> Any:
    parts = [{"part_number": n, "etag": etags[n]} for n in sorted(etags)]
    return client.post(f"/api/uploads/{plan['upload_id']}/complete", json={"parts": parts}, headers=headers)


@pytest.fixture(scope="module")
def big_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clip of more than two parts (near-lossless, so a few seconds weigh over 10 MiB)."""
    path = make_clip(tmp_path_factory.mktemp("big") / "big.mp4", 1280, 720, 6, extra=("-crf", "1"))
    assert 2 * PART < path.stat().st_size <= 3 * PART, path.stat().st_size
    return path


class TestPure:
    def test_part_size_grows_only_past_a_thousand_parts(self) -> None:
        assert direct.part_size(4 * MiB, 8 * MiB) == 8 * MiB
        assert direct.part_size(1024**3, 8 * MiB) == 8 * MiB
        assert direct.part_size(50 * 1024**3, 8 * MiB) == 52 * MiB  # 50 GiB / 1000, rounded up to a MiB
        assert direct.part_size(10 * MiB, MiB) == 5 * MiB, "never below S3's least part"
        assert [direct.part_count(n, 5) for n in (1, 5, 6, 10, 11)] == [1, 1, 2, 2, 3]

    def test_sniff_refuses_only_what_is_plainly_not_a_video(self, clip: Callable[[str], Path]) -> None:
        mp4 = clip("small.mp4").read_bytes()[:65536]
        assert may_be(mp4, ["mp4", "mov"])
        assert not may_be(b"%PDF-1.7\n" + bytes(100), ["mp4", "mov"])
        assert not may_be(b"\x1a\x45\xdf\xa3" + bytes(100), ["mp4", "mov"]), "Matroska when only MP4/MOV are allowed"
        assert may_be(b"\x1a\x45\xdf\xa3" + bytes(100), ["mp4", "mkv"])
        assert not may_be(b"\x00\x00\x00\x04ftyp", ["mp4"]), "a box smaller than its own header"
        assert not may_be(b"", ["mp4"])


def test_start_checks_the_declared_upload(client: FlaskClient, auth: dict[str, str], clip: Callable) -> None:
    path = clip("small.mp4")
    too_big = start(client, auth, path, size=get_settings(client.application).MAX_UPLOAD_BYTES + 1)
    assert (too_big.status_code, too_big.json["error"]["code"]) == (413, "file_too_large")
    empty = start(client, auth, path, size=0)
    assert (empty.status_code, empty.json["error"]["code"]) == (415, "not_a_video")
    pdf = start(client, auth, path, content_type="application/pdf")
    assert (pdf.status_code, pdf.json["error"]["code"]) == (415, "not_a_video")
    anonymous = start(client, {}, path)
    assert anonymous.status_code == 401

    plan = start(client, auth, path).json
    assert plan["part_size"] >= PART and len(plan["parts"]) == 1 and plan["parts_done"] == []
    with client.application.app_context():
        video = db.session.get(Video, plan["video_id"])
        assert video is not None and (video.status, video.size_bytes) == ("uploading", path.stat().st_size)
    assert client.get(f"/api/videos/{plan['video_id']}", headers=auth).json["status"] == "uploading"
    other = client.get(f"/api/uploads/{plan['upload_id']}", headers={"Authorization": "Bearer x"})
    assert other.status_code == 401
    assert client.delete(f"/api/uploads/{plan['upload_id']}", headers=auth).status_code == 204
    assert client.get(f"/api/videos/{plan['video_id']}", headers=auth).status_code == 404


def sigv4_accepts(url: str, method: str, headers: dict[str, str], secret: str) -> bool:
    """Check a presigned URL's signature as S3 does for a request with ``headers`` (moto checks none).

    AWS Signature Version 4, query-string form: the canonical request from the URL and the
    headers it names in ``X-Amz-SignedHeaders``, the payload unsigned.
    """
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    signature = query.pop("X-Amz-Signature")
    signed = query["X-Amz-SignedHeaders"].split(";")
    values = {"host": parts.netloc, **{k.lower(): v for k, v in headers.items()}}
    canonical = "\n".join(
        [
            method,
            parts.path,
            "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query.items())),
            "".join(f"{name}:{values.get(name, '').strip()}\n" for name in signed),
            ";".join(signed),
            "UNSIGNED-PAYLOAD",
        ]
    )
    _key, date, region, service, _terminator = query["X-Amz-Credential"].split("/")
    scope = f"{date}/{region}/{service}/aws4_request"
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    to_sign = f"AWS4-HMAC-SHA256\n{query['X-Amz-Date']}\n{scope}\n{digest}"
    key = f"AWS4{secret}".encode()
    for piece in (date, region, service, "aws4_request"):
        key = hmac.new(key, piece.encode(), hashlib.sha256).digest()
    return hmac.compare_digest(hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(), signature)


def test_each_part_url_signs_its_exact_length(client: FlaskClient, auth: dict[str, str], big_clip: Path) -> None:
    plan = start(client, auth, big_clip).json
    size, part = big_clip.stat().st_size, plan["part_size"]
    count = len(plan["parts"])
    assert count > 1 and [p["size"] for p in plan["parts"]] == [part] * (count - 1) + [size - part * (count - 1)]
    secret = get_settings(client.application).AWS_SECRET_ACCESS_KEY or ""
    for entry in plan["parts"]:
        query = dict(parse_qsl(urlsplit(entry["url"]).query))
        assert query["X-Amz-SignedHeaders"] == "content-length;host"
        length = str(entry["size"])
        assert sigv4_accepts(entry["url"], "PUT", {"Content-Length": length}, secret), "the declared size passes"
        for other in (entry["size"] + 1, 5 * 1024**3):  # a byte more, or S3's largest part: refused
            assert not sigv4_accepts(entry["url"], "PUT", {"Content-Length": str(other)}, secret)
    assert client.delete(f"/api/uploads/{plan['upload_id']}", headers=auth).status_code == 204


def test_resume_and_complete_are_rate_limited_and_keys_are_kept_only_for_ones_own_uploads(
    client: FlaskClient, clip: Callable
) -> None:
    headers = signup_and_login(client, unique_email())
    plan = start(client, headers, clip("small.mp4")).json
    resumed = [client.get(f"/api/uploads/{plan['upload_id']}", headers=headers).status_code for _ in range(150)]
    assert resumed.count(200) == 60 and resumed.count(429) == 90, "UPLOAD_RESUME_LIMIT_PER_USER: 60 a minute"
    made_up = "00000000-0000-4000-8000-000000000000"
    body = {"parts": [{"part_number": 1, "etag": '"x"'}]}
    completes = [
        client.post(
            f"/api/uploads/{made_up}/complete", json=body, headers={**headers, "Idempotency-Key": f"fresh-{n}"}
        ).status_code
        for n in range(150)
    ]
    assert completes.count(404) == 30 and completes.count(429) == 120, "UPLOAD_COMPLETE_LIMIT_PER_USER: 30 a minute"
    with client.application.app_context():
        video = db.session.get(Video, plan["video_id"])
        assert video is not None
        kept = db.session.scalars(select(IdempotencyKey).where(IdempotencyKey.user_id == video.user_id)).all()
        assert kept == [], "no key is stored for an upload that is not the user's"


def test_a_user_holds_a_bounded_number_of_idempotency_keys(
    make_app: Callable[..., Any], clip: Callable[[str], Path]
) -> None:
    client = make_app({"IDEMPOTENCY_KEYS_PER_USER": "3"}).test_client()
    headers = signup_and_login(client, unique_email())
    answers = [start(client, {**headers, "Idempotency-Key": f"key-{n}"}, clip("small.mp4")) for n in range(4)]
    assert [a.status_code for a in answers] == [201, 201, 201, 429]
    assert answers[3].json["error"]["code"] == "too_many_idempotency_keys"
    replay = start(client, {**headers, "Idempotency-Key": "key-0"}, clip("small.mp4"))
    assert (replay.status_code, replay.headers["Idempotent-Replayed"]) == (201, "true"), "a held key still answers"


def test_answers_say_how_long_they_waited_on_s3_and_sqs(
    client: FlaskClient, auth: dict[str, str], clip: Callable
) -> None:
    path = clip("small.mp4")
    started = start(client, auth, path)
    waits = timing.parse(started.headers["Server-Timing"])
    assert waits["s3"] > 0 and waits["sqs"] == 0 and waits["app"] >= waits["s3"], waits
    done = complete(client, auth, started.json, put_parts(started.json, path))
    assert done.status_code == 202, done.json
    waits = timing.parse(done.headers["Server-Timing"])
    assert waits["s3"] > 0 and waits["sqs"] > 0 and waits["app"] >= waits["s3"] + waits["sqs"], waits
    assert set(timing.parse(client.get("/healthz").headers["Server-Timing"])) == {"s3", "sqs", "app"}


@pytest.mark.commits  # other connections read its rows, or it counts real transactions
def test_the_upload_routes_read_nothing_back(client: FlaskClient, auth: dict[str, str], clip: Callable) -> None:
    # Each statement a round trip to the database. Start: the token's user, the quotas, then (after S3's
    # start, so no lock is held across it) the quotas with the user's row locked, the new row and its
    # usage. Complete: the user, the upload, its three moves (completing, uploaded, queued). No row is
    # read again after a commit.
    path = clip("small.mp4")
    with statements(client) as sent:
        started = start(client, auth, path)
    assert started.status_code == 201 and sent == ["SELECT", "SELECT", "SELECT", "INSERT", "INSERT"]
    etags = put_parts(started.json, path)
    with statements(client) as sent:
        done = complete(client, auth, started.json, etags)
    assert done.status_code == 202 and done.json["status"] == "queued", done.json
    assert sent == ["SELECT", "SELECT", "UPDATE", "UPDATE", "UPDATE"]
    with statements(client) as sent:
        assert start(client, {**auth, "Idempotency-Key": "counted"}, path).status_code == 201
    # The keys the user holds (IDEMPOTENCY_KEYS_PER_USER), the key, the start as above, then the key's answer.
    assert sent == ["SELECT", "INSERT", "SELECT", "SELECT", "SELECT", "INSERT", "INSERT", "UPDATE"]


@pytest.mark.commits  # other connections read its rows, or it counts real transactions
def test_the_same_idempotency_key_twice_gives_one_video(
    client: FlaskClient, auth: dict[str, str], clip: Callable
) -> None:
    path = clip("small.mp4")
    key = {**auth, "Idempotency-Key": "retry-me-1"}
    first, second = start(client, key, path), start(client, key, path)
    assert first.status_code == second.status_code == 201
    assert second.json == first.json and second.headers["Idempotent-Replayed"] == "true"
    reused = start(client, key, path, title="another video")
    assert (reused.status_code, reused.json["error"]["code"]) == (422, "idempotency_key_reused")
    with client.application.app_context():
        owner = db.session.get(Video, first.json["video_id"])
        assert owner is not None
        count = db.session.query(Video).filter(Video.user_id == owner.user_id, Video.title == path.stem).count()
    assert count == 1

    # Two copies of one request at once: one runs, the other gets its answer or "in progress".
    racing = {**auth, "Idempotency-Key": "race-1"}
    answers: list[Any] = []

    def send() -> None:
        answers.append(start(client.application.test_client(), racing, path))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    created = {a.json["video_id"] for a in answers if a.status_code == 201}
    assert len(created) == 1 and {a.status_code for a in answers} <= {201, 409}


# The replay answers without reading the body: the test client's temporary file of it is then left unclosed.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_form_upload_is_idempotent_too(client: FlaskClient, auth: dict[str, str], clip: Callable) -> None:
    path, headers = clip("small.mp4"), {**auth, "Idempotency-Key": "form-1"}

    def post() -> Any:
        with path.open("rb") as f:
            return client.post(
                "/api/videos/upload", data={"title": "form", "video_file": (f, path.name)}, headers=headers
            )

    first, second = post(), post()
    assert first.status_code == second.status_code == 202, second.json
    assert second.json["video_id"] == first.json["video_id"] and second.headers["Idempotent-Replayed"] == "true"
    del first, second
    gc.collect()  # here, where the warning is ignored, not in the next test


@pytest.mark.e2e
def test_direct_upload_end_to_end(
    stack: Callable[..., Stack],  # noqa: F811
    start_worker: Callable[..., Worker],
    big_clip: Path,
    tmp_path: Path,
) -> None:
    s = stack({"UPLOAD_PART_BYTES": str(PART)})
    start_worker("direct", s.env)
    plan = start(s.client, s.headers, big_clip).json
    assert len(plan["parts"]) == 3 and plan["part_size"] == PART
    accepted = complete(s.client, s.headers, plan, put_parts(plan, big_clip))
    assert accepted.status_code == 202, accepted.json
    assert accepted.json["video_id"] == plan["video_id"]
    done = s.wait_status(plan["video_id"], "processed")
    with s.app.app_context():
        storage = get_storage()
        stored = storage.client.head_object(Bucket=storage.bucket, Key=done.original_key)
        assert stored["ContentLength"] == big_clip.stat().st_size
        storage.download_file(done.processed_key, tmp_path / "out.mp4")
    video = next(st for st in ffprobe(tmp_path / "out.mp4")["streams"] if st["codec_type"] == "video")
    assert (video["width"], video["height"]) == (1280, 720)
    assert (done.width, done.height, done.s3_upload_id) == (1280, 720, None)


@pytest.mark.e2e
def test_a_resumed_upload_sends_only_the_missing_parts(
    stack: Callable[..., Stack],  # noqa: F811
    big_clip: Path,
) -> None:
    s = stack({"UPLOAD_PART_BYTES": str(PART)})
    plan = start(s.client, s.headers, big_clip).json
    first = put_parts(plan, big_clip, only={1})  # the connection drops after one part of three
    state = s.client.get(f"/api/uploads/{plan['upload_id']}", headers=s.headers).json
    assert [p["part_number"] for p in state["parts_done"]] == [1]
    assert state["parts_done"][0]["etag"] == first[1] and state["parts_done"][0]["size"] == PART
    assert [p["part_number"] for p in state["parts"]] == [2, 3], "fresh URLs for the missing parts only"
    rest = put_parts(state, big_clip)
    assert sorted(rest) == [2, 3]
    with s.app.app_context():
        storage = get_storage()
        row = s.row(plan["video_id"])
        assert row.s3_upload_id
        listed = storage.list_parts(row.original_key, row.s3_upload_id)
        assert [p["PartNumber"] for p in listed] == [1, 2, 3], "each part once"
    accepted = complete(s.client, s.headers, plan, {**first, **rest})
    assert accepted.status_code == 202 and s.row(plan["video_id"]).status in ("queued", "processing", "processed")


@pytest.mark.e2e
def test_content_that_is_not_a_video_is_refused_and_quarantined(
    stack: Callable[..., Stack],  # noqa: F811
    start_worker: Callable[..., Worker],
    tmp_path: Path,
) -> None:
    s = stack({})
    start_worker("direct-bad", s.env)
    pdf = tmp_path / "clip.mp4"
    pdf.write_bytes(b"%PDF-1.7\n" + bytes(200_000))
    plan = start(s.client, s.headers, pdf).json
    refused = complete(s.client, s.headers, plan, put_parts(plan, pdf))
    assert (refused.status_code, refused.json["error"]["code"]) == (415, "not_a_video")
    row = s.row(plan["video_id"])
    assert (row.status, row.error_code) == ("failed", "not_a_video")
    quarantined = f"quarantine/{plan['video_id']}/clip.mp4"
    assert s.keys(plan["video_id"]) == [quarantined] == [row.original_key], "moved, never deleted in line"

    # Looks like MP4 to the first bytes (an ftyp box), is not one: the worker's probe refuses it.
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + bytes(200_000))
    plan = start(s.client, s.headers, fake).json
    assert complete(s.client, s.headers, plan, put_parts(plan, fake)).status_code == 202
    row = s.wait_status(plan["video_id"], "failed", timeout=120)
    assert row.error_code == "not_a_video", row.error_message
    quarantined = f"quarantine/{plan['video_id']}/fake.mp4"
    assert s.keys(plan["video_id"]) == [quarantined] == [row.original_key], "the worker quarantined what it refused"
    assert s.client.delete(f"/api/videos/{plan['video_id']}", headers=s.headers).status_code == 204
    assert s.keys(plan["video_id"]) == [], "deleting the video deletes its quarantined original"


@pytest.mark.e2e
def test_wrong_size_is_refused(stack: Callable[..., Stack], clip: Callable) -> None:  # noqa: F811
    s = stack({})
    path = clip("small.mp4")
    plan = start(s.client, s.headers, path, size=path.stat().st_size + 10).json
    etags = put_parts(plan, path)
    refused = complete(s.client, s.headers, plan, etags)
    assert (refused.status_code, refused.json["error"]["code"]) == (400, "size_mismatch")
    assert s.keys(plan["video_id"]) == [f"quarantine/{plan['video_id']}/small.mp4"]
    bad = s.client.post(
        f"/api/uploads/{plan['upload_id']}/complete",
        json={"parts": [{"part_number": 1, "etag": "x"}]},
        headers=s.headers,
    )
    assert (bad.status_code, bad.json["error"]["code"]) == (409, "not_uploading")


@pytest.mark.e2e
def test_an_expired_unfinished_upload_is_cleaned_up(stack: Callable[..., Stack], big_clip: Path) -> None:  # noqa: F811
    s = stack({"UPLOAD_PART_BYTES": str(PART)})
    plan = start(s.client, s.headers, big_clip).json
    put_parts(plan, big_clip, only={1})
    with s.app.app_context():
        settings = get_settings(s.app)
        s3 = aws_client("s3", settings)
        video = db.session.get(Video, plan["video_id"])
        assert video is not None
        key, upload, owner = video.original_key, video.s3_upload_id, video.user_id
        video.upload_expires_at = utcnow() - timedelta(seconds=1)
        db.session.commit()
        report = sweep(settings)
        assert report.expired == [plan["video_id"]]
        assert db.session.get(Video, plan["video_id"]) is None
        uploads = s3.list_multipart_uploads(Bucket=settings.S3_BUCKET, Prefix=f"originals/{plan['video_id']}/")
        assert uploads.get("Uploads", []) == [], "S3 dropped the parts"
        with pytest.raises(s3.exceptions.NoSuchUpload):
            s3.list_parts(Bucket=settings.S3_BUCKET, Key=key, UploadId=upload)
        old = IdempotencyKey(user_id=owner, key="old", fingerprint="f", created_at=utcnow() - timedelta(days=2))
        db.session.add(old)
        db.session.commit()
        old_id = old.id
        sweep(settings)
        db.session.expunge_all()
        assert db.session.get(IdempotencyKey, old_id) is None, "old idempotency keys are pruned"
    cors = json.dumps(aws_client("s3", get_settings(s.app)).get_bucket_cors(Bucket=settings.S3_BUCKET)["CORSRules"])
    assert "ETag" in cors and "PUT" in cors
    rules = aws_client("s3", settings).get_bucket_lifecycle_configuration(Bucket=settings.S3_BUCKET)["Rules"]
    expiry = next(rule for rule in rules if rule["ID"] == "expire-quarantine")
    assert (expiry["Filter"]["Prefix"], expiry["Expiration"]["Days"]) == ("quarantine/", settings.QUARANTINE_DAYS)


@pytest.mark.e2e
def test_an_aborted_upload_still_counts_what_s3_received(stack: Callable[..., Stack], big_clip: Path) -> None:  # noqa: F811
    s = stack({"UPLOAD_PART_BYTES": str(PART)})
    plan = start(s.client, s.headers, big_clip).json
    with s.app.app_context():
        user_id = db.session.get(Video, plan["video_id"]).user_id
        assert quotas._usage(user_id, lock=False)[1:] == (1, big_clip.stat().st_size), "counted from its start"
        db.session.commit()
    put_parts(plan, big_clip, only={1})
    assert s.client.delete(f"/api/uploads/{plan['upload_id']}", headers=s.headers).status_code == 204
    with s.app.app_context():
        assert db.session.get(Video, plan["video_id"]) is None
        assert quotas._usage(user_id, lock=False)[1:] == (1, PART), "the part S3 received stays counted"


def test_a_key_with_the_token_of_a_deleted_user_is_401(
    client: FlaskClient, auth: dict[str, str], clip: Callable
) -> None:
    with client.application.app_context():
        db.session.query(Video).delete()
        db.session.execute(db.text("DELETE FROM users"))
        db.session.commit()
    gone = start(client, {**auth, "Idempotency-Key": "k"}, clip("small.mp4"))
    assert (gone.status_code, gone.json["error"]["code"]) == (401, "invalid_token")
