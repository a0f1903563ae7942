"""Sign-up and log-in."""

from __future__ import annotations

import time

import jwt
import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.security import generate_password_hash

from app import sessions
from config import load_settings
from domain.extensions import db
from domain.models import User
from tests.conftest import PASSWORD, signup_and_login, unique_email

SIGNUP = {"email": "Creator@Example.com", "password": PASSWORD, "password_confirm": PASSWORD, "city": "Lima"}


def test_signup_stores_a_hashed_password(client: FlaskClient, ctx: None) -> None:
    response = client.post("/api/auth/signup", json=SIGNUP)
    assert response.status_code == 201
    user = db.session.query(User).one()
    assert (user.email, user.city) == ("creator@example.com", "Lima")
    assert PASSWORD not in user.password_hash and user.check_password(PASSWORD)


def test_duplicate_email_is_a_conflict(client: FlaskClient) -> None:
    assert client.post("/api/auth/signup", json=SIGNUP).status_code == 201
    again = client.post("/api/auth/signup", json={**SIGNUP, "email": "creator@EXAMPLE.com"})
    assert again.status_code == 409 and again.json["error"]["code"] == "email_taken"


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"password": "short1", "password_confirm": "short1"}, "weak_password"),
        ({"password": "lettersonly", "password_confirm": "lettersonly"}, "weak_password"),
        ({"password": "password12345", "password_confirm": "password12345"}, "weak_password"),  # long, and common
        ({"password": "qwertyuiop123", "password_confirm": "qwertyuiop123"}, "weak_password"),  # a keyboard walk
        ({"password": "creatorexample", "password_confirm": "creatorexample"}, "weak_password"),  # the email
        ({"password_confirm": "something-else-2"}, "password_mismatch"),
        ({"email": "not-an-email"}, "invalid_email"),
    ],
)
def test_bad_signups_are_400(client: FlaskClient, changes: dict, code: str) -> None:
    response = client.post("/api/auth/signup", json={**SIGNUP, **changes})
    assert response.status_code == 400
    assert response.json["error"]["code"] == code and response.json["error"]["message"]


def test_body_must_be_json(client: FlaskClient) -> None:
    response = client.post("/api/auth/signup", data="email=x")
    assert response.status_code == 400 and response.json["error"]["code"] == "invalid_json"


def test_login_returns_a_signed_bearer_token(client: FlaskClient, app) -> None:
    client.post("/api/auth/signup", json=SIGNUP)
    response = client.post("/api/auth/login", json={"email": "creator@example.com", "password": PASSWORD})
    assert response.status_code == 200
    body = response.json
    assert body["token_type"] == "bearer" and body["expires_in"] == 3600
    claims = jwt.decode(body["access_token"], app.config["SECRET_KEY"], algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 3600


@pytest.mark.parametrize("password", ["wrong-password-1", ""])
def test_wrong_credentials_are_401(client: FlaskClient, password: str) -> None:
    client.post("/api/auth/signup", json=SIGNUP)
    response = client.post("/api/auth/login", json={"email": "creator@example.com", "password": password})
    assert response.status_code == 401 and response.json["error"]["code"] == "invalid_credentials"


@pytest.mark.parametrize(
    ("header", "code"),
    [(None, "unauthorized"), ("Bearer nonsense", "invalid_token"), ("Basic abc", "unauthorized")],
)
def test_videos_need_a_valid_token(client: FlaskClient, header: str | None, code: str) -> None:
    headers = {"Authorization": header} if header else {}
    response = client.get("/api/videos", headers=headers)
    assert response.status_code == 401 and response.json["error"]["code"] == code


def test_expired_token_is_401(client: FlaskClient, app) -> None:
    token = jwt.encode({"sub": "1", "iat": 0, "exp": 1, "jti": "x"}, app.config["SECRET_KEY"], algorithm="HS256")
    response = client.get("/api/videos", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401 and response.json["error"]["code"] == "token_expired"


def test_a_logged_out_token_is_refused_until_it_would_have_expired(client: FlaskClient, app) -> None:
    headers = signup_and_login(client, unique_email())
    other = signup_and_login(client, unique_email())
    claims = jwt.decode(headers["Authorization"][7:], app.config["SECRET_KEY"], algorithms=["HS256"])
    assert len(claims["jti"]) == 32, "every token names itself"
    assert client.get("/api/videos", headers=headers).status_code == 200
    assert client.post("/api/auth/logout", headers=headers).status_code == 204
    refused = client.get("/api/videos", headers=headers)
    assert (refused.status_code, refused.json["error"]["code"]) == (401, "token_revoked")
    assert client.post("/api/auth/logout", headers=headers).status_code == 401, "it can't log out twice"
    assert client.get("/api/videos", headers=other).status_code == 200, "only that token"
    with app.app_context():
        key = sessions._key("revoked", claims["jti"])
        remaining = sessions.store().get_expiry(key) - time.time()
    assert 3500 < remaining <= 3600, "listed for the rest of the token's lifetime, no longer"


def test_passwords_are_hashed_at_owasps_scrypt_and_old_hashes_redone_at_login(make_app) -> None:
    client = make_app({"PASSWORD_HASH": "scrypt:32768:8:3"}).test_client()
    email = unique_email()
    signup_and_login(client, email)
    with client.application.app_context():
        user = db.session.scalar(select(User).where(User.email == email))
        assert user is not None and user.password_hash.startswith("scrypt:32768:8:3$")
        user.password_hash = generate_password_hash(PASSWORD, method="scrypt:16384:8:1")  # an old account's
        db.session.commit()
    assert client.post("/api/auth/login", json={"email": email, "password": PASSWORD}).status_code == 200
    with client.application.app_context():
        user = db.session.scalar(select(User).where(User.email == email))
        assert user is not None and user.password_hash.startswith("scrypt:32768:8:3$") and user.check_password(PASSWORD)
    assert load_settings({"APP_ENV": "testing"}).PASSWORD_HASH == "scrypt:32768:8:3", "the default"


def test_logout_holds_with_rate_limits_off(make_app) -> None:
    client = make_app({"RATELIMIT_ENABLED": "false"}).test_client()
    headers = signup_and_login(client, unique_email())
    assert client.post("/api/auth/logout", headers=headers).status_code == 204
    assert client.get("/api/videos", headers=headers).json["error"]["code"] == "token_revoked"


def test_a_logged_out_token_holds_no_idempotency_key_and_no_limit_of_its_user(client: FlaskClient, app) -> None:
    headers = signup_and_login(client, unique_email())
    user_id = int(jwt.decode(headers["Authorization"][7:], app.config["SECRET_KEY"], algorithms=["HS256"])["sub"])
    assert client.post("/api/auth/logout", headers=headers).status_code == 204
    body = {"title": "t", "filename": "a.mp4", "size": 1000, "content_type": "video/mp4"}
    for n in range(3):
        answer = client.post("/api/uploads", json=body, headers={**headers, "Idempotency-Key": f"after-logout-{n}"})
        assert answer.json["error"]["code"] == "token_revoked"
    with app.app_context():
        from domain.models import IdempotencyKey

        assert db.session.scalars(select(IdempotencyKey).where(IdempotencyKey.user_id == user_id)).all() == []


def test_an_ipv6_client_is_one_client_per_64(app) -> None:
    with app.test_request_context(environ_base={"REMOTE_ADDR": "2001:db8:1:2:aaaa::1"}):
        assert sessions.client_network() == "2001:db8:1:2::/64"
    with app.test_request_context(environ_base={"REMOTE_ADDR": "203.0.113.7"}):
        assert sessions.client_network() == "203.0.113.7"


def test_logins_go_on_when_the_shared_store_is_down(make_app) -> None:
    client = make_app({"RATELIMIT_STORAGE_URI": "redis://127.0.0.1:1/0"}).test_client()  # nothing listens there
    headers = signup_and_login(client, unique_email())
    assert client.get("/api/videos", headers=headers).status_code == 200, "not revoked, as far as anyone can tell"
    assert client.post("/api/auth/logout", headers=headers).status_code == 204
