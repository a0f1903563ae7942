"""Sign-up and log-in."""

from __future__ import annotations

import jwt
import pytest
from flask.testing import FlaskClient

from app.extensions import db
from app.models import User
from tests.conftest import PASSWORD

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
    token = jwt.encode({"sub": "1", "iat": 0, "exp": 1}, app.config["SECRET_KEY"], algorithm="HS256")
    response = client.get("/api/videos", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401 and response.json["error"]["code"] == "token_expired"
