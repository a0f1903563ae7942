"""Abusive clients: huge bodies, many parts, forged tokens, brute force, junk input; errors that leak nothing."""

from __future__ import annotations

import io
import logging
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import jwt
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, text, update
from sqlalchemy.exc import DBAPIError
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from app.security import HEADERS
from app.spool import SPOOL_PREFIX
from domain import quotas
from domain.extensions import db
from domain.models import Usage, User, Video, utcnow
from ops.logs import KeyValueFormatter
from tests.conftest import PASSWORD, post_upload, signup_and_login, unique_email


def spool_files(app: Flask) -> list[str]:
    return sorted(p.name for p in Path(app.config["UPLOAD_TMP_DIR"]).glob(f"{SPOOL_PREFIX}*"))


def multipart(client: FlaskClient, headers: dict, data: dict) -> object:
    boundary, body = encode_multipart(data)
    return client.post(
        "/api/videos/upload", data=body, headers=headers, content_type=f"multipart/form-data; boundary={boundary}"
    )


class TestBodies:
    def test_json_routes_read_a_few_kilobytes_only(self, client: FlaskClient) -> None:
        huge = b'{"email": "' + b"a" * 300_000 + b'"}'
        response = client.post("/api/auth/login", data=huge, content_type="application/json")
        assert response.status_code == 413 and response.json["error"]["code"] == "body_too_large"

    def test_deep_json_is_400(self, client: FlaskClient) -> None:
        deep = "[" * 5000 + "]" * 5000  # inside the body limit, deeper than Python's recursion limit
        response = client.post("/api/auth/login", data=deep, content_type="application/json")
        assert response.status_code == 400
        assert client.post("/api/auth/login", data="[" * 100_000, content_type="application/json").status_code == 413

    def test_many_parts_are_refused_and_leave_no_spool_files(
        self, app: Flask, client: FlaskClient, auth: dict, clip: Callable
    ) -> None:
        data = {f"f{i}": FileStorage(io.BytesIO(b"x" * 100), filename=f"{i}.mp4") for i in range(50)}
        response = multipart(client, auth, {"title": "t", **data})
        assert response.status_code == 413 and response.json["error"]["code"] == "request_too_large"
        assert spool_files(app) == []

    def test_only_the_expected_fields(self, app: Flask, client: FlaskClient, auth: dict, clip: Callable) -> None:
        data = {"title": "t", "video_file": FileStorage(io.BytesIO(clip("small.mp4").read_bytes()), filename="a.mp4")}
        response = multipart(client, auth, {**data, "extra": "x"})
        assert response.status_code == 400 and response.json["error"]["code"] == "invalid_request"
        assert list(response.json["error"]["fields"]) == ["extra"]
        assert spool_files(app) == []

    def test_spool_files_are_removed_after_every_upload(
        self, app: Flask, client: FlaskClient, auth: dict, clip: Callable, tmp_path: Path
    ) -> None:
        assert post_upload(client, auth, clip("small.mp4")).status_code == 202
        junk = tmp_path / "junk.mp4"
        junk.write_bytes(b"junk" * 1000)
        assert post_upload(client, auth, junk).status_code == 415
        assert spool_files(app) == []

    def test_a_new_web_process_removes_what_dead_ones_left(self, make_app: Callable, app: Flask) -> None:
        folder = Path(app.config["UPLOAD_TMP_DIR"])
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        orphan = folder / f"{SPOOL_PREFIX}{dead.pid}-abc"
        mine = folder / f"{SPOOL_PREFIX}{os.getpid()}-def"
        orphan.write_bytes(b"x")
        mine.write_bytes(b"y")
        make_app({"SQS_QUEUE_NAME": "api-tests"})
        assert not orphan.exists() and mine.exists()
        mine.unlink()


class TestAccounts:
    def test_login_costs_the_same_for_unknown_emails(self, client: FlaskClient) -> None:
        signup_and_login(client, "known@example.com")

        def timed(email: str) -> float:
            start = time.perf_counter()
            response = client.post("/api/auth/login", json={"email": email, "password": "wrong-password-9"})
            assert response.status_code == 401
            return time.perf_counter() - start

        known, unknown = [], []
        for _ in range(7):  # interleaved, side by side: the machine's noise hits both alike
            known.append(timed("known@example.com"))
            unknown.append(timed(f"{uuid.uuid4().hex}@example.com"))
        ratio = statistics.median(known) / statistics.median(unknown)
        assert 0.5 < ratio < 2, f"known {statistics.median(known):.3f}s vs unknown {statistics.median(unknown):.3f}s"

    @pytest.mark.parametrize(
        "claims",
        [
            {"sub": "1", "iat": 0},
            {"iat": 0, "exp": 2**40},
            {"sub": "1", "exp": 2**40},
            {"sub": "x", "iat": 0, "exp": 2**40},
        ],
        ids=["no-exp", "no-sub", "no-iat", "bad-sub"],
    )
    def test_tokens_need_exp_iat_and_a_numeric_sub(self, app: Flask, client: FlaskClient, claims: dict) -> None:
        token = jwt.encode(claims, app.config["SECRET_KEY"], algorithm="HS256")
        response = client.get("/api/videos", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401 and response.json["error"]["code"] == "invalid_token"

    def test_every_answer_carries_security_headers(self, client: FlaskClient, auth: dict) -> None:
        for response in (
            client.get("/healthz"),
            client.get("/api/videos", headers=auth),
            client.get("/api/nowhere"),
            client.post("/api/auth/login", json={"email": "player@example.com", "password": PASSWORD}),
        ):
            for name, value in HEADERS.items():
                assert response.headers[name] == value
            assert response.headers["X-Request-ID"]
        token_answer = client.post("/api/auth/login", json={"email": "player@example.com", "password": PASSWORD})
        assert token_answer.headers["Cache-Control"] == "no-store"

    def test_cors_origins_come_from_settings(self, make_app: Callable) -> None:
        client = make_app({"SQS_QUEUE_NAME": "api-tests", "CORS_ORIGINS": "https://play.example"}).test_client()
        preflight = {"Origin": "https://play.example", "Access-Control-Request-Method": "POST"}
        allowed = client.options("/api/auth/login", headers=preflight)
        assert allowed.headers["Access-Control-Allow-Origin"] == "https://play.example"
        other = client.options("/api/auth/login", headers={**preflight, "Origin": "https://evil.example"})
        assert "Access-Control-Allow-Origin" not in other.headers


LIMITED = {
    "SQS_QUEUE_NAME": "api-tests",
    "LOGIN_LIMIT_PER_ACCOUNT_ADDRESS": "5 per minute",
    "LOGIN_DELAY_FREE_FAILURES": "3",
    "LOGIN_DELAY_MAX_SECONDS": "60",
    "LOGIN_LIMIT_PER_ADDRESS": "8 per minute",
    "SIGNUP_LIMIT_PER_ADDRESS": "4 per minute",
    "TRUSTED_PROXIES": "1",
}
OTHER_WEB_PROCESS = """
from app import create_app
client = create_app().test_client()
wrong = {"email": "victim@example.com", "password": "not-it-123"}
for n in range(12):
    print(client.post("/api/auth/login", json=wrong, headers={"X-Forwarded-For": "10.0.0.1"}).status_code)
"""


@pytest.fixture
def limited(make_app: Callable, app: Flask) -> Flask:
    """An app with tight limits (one web process)."""
    return make_app(LIMITED)


class TestRateLimits:
    def test_an_attackers_failures_slow_the_attacker_and_never_lock_the_owner_out(
        self, limited: Flask, base_env: dict, redis_url: str, client: FlaskClient
    ) -> None:
        if not redis_url.startswith("redis://"):
            pytest.skip("needs Redis: memory counters are per process by design")
        signup_and_login(client, "victim@example.com")
        other = subprocess.run(
            [sys.executable, "-c", OTHER_WEB_PROCESS],
            env={**os.environ, **base_env, **LIMITED},
            capture_output=True,
            text=True,
            check=True,
        )
        answers = other.stdout.split()
        assert answers[:3] == ["401"] * 3, "three free failures (LOGIN_DELAY_FREE_FAILURES)"
        assert answers.count("401") <= 5 and answers[-1] == "429", answers  # then a growing delay, then the limit
        web = limited.test_client()
        login = {"email": "victim@example.com", "password": PASSWORD}
        owner = web.post("/api/auth/login", json=login, headers={"X-Forwarded-For": "10.0.0.9"})
        assert owner.status_code == 200, "the owner, from another address, after the attacker's 12 failures"
        attacker = web.post("/api/auth/login", json=login, headers={"X-Forwarded-For": "10.0.0.1"})
        assert attacker.status_code == 429, "the attacker's address waits, across web processes, even with it right"
        assert attacker.json["error"]["code"] in ("rate_limited", "login_delayed")
        assert 0 < int(attacker.headers["Retry-After"]) <= 60
        stranger = web.post("/api/auth/login", json={"email": "x@example.com", "password": "nope-1234"})
        assert stranger.status_code == 401, "another account is not held back"

    def test_logging_in_does_not_count_against_the_account(self, limited: Flask, client: FlaskClient) -> None:
        signup_and_login(client, "owner@example.com")
        web = limited.test_client()
        body = {"email": "owner@example.com", "password": PASSWORD}
        assert [web.post("/api/auth/login", json=body).status_code for _ in range(5)] == [200] * 5

    def test_every_upload_attempt_counts(self, make_app: Callable, app: Flask, tmp_path: Path) -> None:
        flask_app = make_app({"SQS_QUEUE_NAME": "api-tests", "UPLOAD_LIMIT_PER_USER": "2 per minute"})
        client = flask_app.test_client()
        headers = signup_and_login(client, unique_email())
        junk = tmp_path / "junk.mp4"
        junk.write_bytes(b"junk" * 100)
        answers = [post_upload(client, headers, junk).status_code for _ in range(3)]
        assert answers == [415, 415, 429], "refused uploads cost a probe: they count too"
        other = signup_and_login(client, unique_email())
        assert post_upload(client, other, junk).status_code == 415, "another user has their own budget"

    def test_one_address_is_limited_on_sign_up(self, limited: Flask) -> None:
        client = limited.test_client()
        answers = []
        for _ in range(6):
            body = {"email": unique_email(), "password": PASSWORD, "password_confirm": PASSWORD}
            answers.append(client.post("/api/auth/signup", json=body, headers={"X-Forwarded-For": "10.1.1.1"}))
        assert [r.status_code for r in answers] == [201] * 4 + [429] * 2
        assert "Retry-After" in answers[-1].headers
        body = {"email": unique_email(), "password": PASSWORD, "password_confirm": PASSWORD}
        assert client.post("/api/auth/signup", json=body, headers={"X-Forwarded-For": "10.1.1.2"}).status_code == 201


def add_video(user_id: int, **values: object) -> str:
    """Add a video and its usage (as an upload records them), at its ``created_at``."""
    video = Video(user_id=user_id, title="t", original_key="originals/x/a.mp4", size_bytes=1000, **values)
    db.session.add(video)
    db.session.flush()
    db.session.add(Usage(user_id=user_id, video_id=video.id, bytes=video.size_bytes, created_at=video.created_at))
    db.session.commit()
    return video.id


class TestFairUse:
    def fair(self, make_app: Callable, **limits: str) -> tuple[Flask, FlaskClient, dict, int]:
        flask_app = make_app({"SQS_QUEUE_NAME": "api-tests", **limits})
        client = flask_app.test_client()
        headers = signup_and_login(client, unique_email())
        with flask_app.app_context():
            user_id = db.session.query(User).order_by(User.id.desc()).first().id
        return flask_app, client, headers, user_id

    def test_videos_in_flight(self, make_app: Callable, app: Flask, clip: Callable) -> None:
        flask_app, client, headers, user_id = self.fair(make_app, USER_MAX_ACTIVE_VIDEOS="2")
        with flask_app.app_context():
            add_video(user_id, status="queued")
            add_video(user_id, status="processed")
        assert post_upload(client, headers, clip("small.mp4")).status_code == 202
        refused = post_upload(client, headers, clip("small.mp4"))
        assert refused.status_code == 429 and refused.json["error"]["code"] == "too_many_active_videos"
        assert refused.headers["Retry-After"] and spool_files(flask_app) == []
        with flask_app.app_context():
            assert db.session.query(Video).filter_by(user_id=user_id).count() == 3

    def test_uploads_and_bytes_per_day(self, make_app: Callable, app: Flask, clip: Callable) -> None:
        flask_app, client, headers, user_id = self.fair(make_app, USER_MAX_UPLOADS_PER_DAY="2")
        with flask_app.app_context():
            add_video(user_id, status="processed")
            add_video(user_id, status="failed", created_at=utcnow() - timedelta(days=2))  # outside the window
        assert post_upload(client, headers, clip("small.mp4")).status_code == 202
        refused = post_upload(client, headers, clip("small.mp4"))
        assert refused.status_code == 429 and refused.json["error"]["code"] == "daily_upload_limit"
        assert 80_000 < int(refused.headers["Retry-After"]) <= 86_401

        size = clip("small.mp4").stat().st_size
        flask_app, client, headers, user_id = self.fair(make_app, USER_MAX_BYTES_PER_DAY=str(size + 500))
        with flask_app.app_context():
            add_video(user_id, status="processed")  # 1000 bytes today
        refused = post_upload(client, headers, clip("small.mp4"))
        assert refused.status_code == 429 and refused.json["error"]["code"] == "daily_bytes_limit"

    @pytest.mark.commits  # other connections read its rows, or it counts real transactions
    def test_the_upload_check_holds_the_users_row_until_the_commit(self, make_app: Callable, app: Flask) -> None:
        flask_app, _client, _headers, user_id = self.fair(make_app)
        with flask_app.app_context():
            if db.engine.dialect.name != "postgresql":
                pytest.skip("SQLite locks the whole database, not rows")
            add_video(user_id, status="queued")
            grab = select(User.id).where(User.id == user_id).with_for_update(nowait=True)
            quotas.check_upload(user_id, 0, lock=True)  # counts and locks in one statement
            with db.engine.connect() as other, pytest.raises(DBAPIError, match="could not obtain lock"):
                other.execute(grab)
            db.session.commit()
            with db.engine.connect() as other:
                assert other.execute(grab).scalar() == user_id, "free again once the caller commits"

    def test_retries_only_cure_what_can_be_cured_and_are_counted(self, make_app: Callable, app: Flask) -> None:
        flask_app, client, headers, user_id = self.fair(make_app, VIDEO_MAX_RETRIES="2")
        with flask_app.app_context():
            bomb = add_video(user_id, status="failed", error_code="too_complex")
            flaky = add_video(user_id, status="failed", error_code="worker_lost")
        refused = client.post(f"/api/videos/{bomb}/retry", headers=headers)
        assert refused.status_code == 409 and refused.json["error"]["code"] == "not_retryable"
        for _ in range(2):
            assert client.post(f"/api/videos/{flaky}/retry", headers=headers).status_code == 202
            with flask_app.app_context():
                db.session.execute(
                    update(Video).where(Video.id == flaky).values(status="failed", error_code="worker_lost")
                )
                db.session.commit()
        limited = client.post(f"/api/videos/{flaky}/retry", headers=headers)
        assert limited.status_code == 429 and limited.json["error"]["code"] == "retry_limit"
        with flask_app.app_context():
            assert db.session.get(Video, flaky).retries == 2


class TestErrors:
    @pytest.mark.parametrize(
        ("method", "path", "body", "status"),
        [
            ("post", "/api/auth/signup", {"email": "a" * 300 + "@example.com", "password": PASSWORD}, 400),
            ("post", "/api/auth/signup", {"email": ["x"], "password": 5, "first_name": {"a": 1}}, 400),
            ("post", "/api/auth/login", {"email": "a" * 300 + "@example.com", "password": PASSWORD}, 400),
            ("post", "/api/auth/login", {"email": None, "password": ["x"]}, 400),
            ("get", "/api/videos?page=922337203685477580", None, 400),
            ("get", "/api/videos?page=-1", None, 400),
            ("get", "/api/videos/%00", None, 404),
            ("get", "/api/videos/" + "9" * 5000, None, 404),
            ("post", "/api/videos/%00/retry", None, 404),
        ],
    )
    def test_bad_input_is_never_500(
        self, client: FlaskClient, auth: dict, method: str, path: str, body: dict | None, status: int
    ) -> None:
        response = getattr(client, method)(path, json=body, headers=auth)
        assert response.status_code == status, response.json
        assert response.json["error"]["code"] and response.json["error"]["message"]

    @pytest.mark.parametrize("name", ["x" * 300 + ".mp4", "a\x00b\x07c.mp4", "../../etc/passwd.mp4", "\u202egnp.mp4"])
    def test_hostile_file_names_are_stored_clean(
        self, app: Flask, client: FlaskClient, auth: dict, clip: Callable, name: str
    ) -> None:
        data = {"title": "t", "video_file": FileStorage(io.BytesIO(clip("small.mp4").read_bytes()), filename=name)}
        response = multipart(client, auth, data)
        assert response.status_code == 202, response.json
        with app.app_context():
            video = db.session.get(Video, response.json["video_id"])
            assert len(video.original_filename) <= 255 and video.original_filename.isprintable()
            assert "/" not in video.original_filename and len(video.original_key) < 200
            assert video.original_key.startswith(f"originals/{video.id}/")

    def test_a_broken_multipart_header_is_a_client_error(self, client: FlaskClient, auth: dict, clip: Callable) -> None:
        data = {"title": "t", "video_file": FileStorage(io.BytesIO(b"x" * 1000), filename="a\rb\nc.mp4")}
        response = multipart(client, auth, data)
        assert 400 <= response.status_code < 500 and response.json["error"]["code"]

    def test_sql_parameters_never_reach_the_log(self, app: Flask, ctx: None) -> None:
        values = {"email": "a" * 300, "hash": "scrypt:32768:8:1$secret-hash", "now": "2026-01-01T00:00:00+00:00"}
        insert = "INSERT INTO users (email, password_hash, created_at) VALUES (:email, :hash, :now)"
        if db.engine.dialect.name == "sqlite":
            insert = "INSERT INTO users (id, email, password_hash) VALUES ('not-an-int', :email, :hash)"
        with pytest.raises(DBAPIError) as caught:  # too long for PostgreSQL; a bad key for SQLite
            db.session.execute(text(insert), values)
        db.session.rollback()
        assert "secret-hash" not in str(caught.value) and "parameters hidden" in str(caught.value)

    def test_a_500_names_the_request_not_the_cause(self, app: Flask, client: FlaskClient, auth: dict) -> None:
        with app.app_context():
            user = db.session.query(User).one()
        boom = RuntimeError("/srv/secret/path exploded")
        original = app.view_functions["api.list_videos"]
        app.view_functions["api.list_videos"] = lambda: (_ for _ in ()).throw(boom)
        try:
            response = client.get("/api/videos", headers={**auth, "X-Request-ID": "req-123"})
        finally:
            app.view_functions["api.list_videos"] = original
        assert response.status_code == 500 and user.id
        assert "req-123" in response.json["error"]["message"] and "/srv" not in response.json["error"]["message"]

    def test_log_lines_escape_control_characters(self) -> None:
        record = logging.LogRecord("x", logging.INFO, "f", 1, "evil\r\nlevel=ERROR fake\x1b[31m", None, None)
        line = KeyValueFormatter().format(record)
        assert "\n" not in line and "\r" not in line and "\x1b" not in line
        assert 'msg="evil\\r\\nlevel=ERROR fake\\x1b[31m"' in line
