"""Sign up and log in."""

from __future__ import annotations

import functools
import re
from typing import Any

from flask import Response, jsonify, request
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash

from app.api import bp
from app.api.errors import APIError
from app.auth import issue_token
from app.extensions import db
from app.models import User
from app.ratelimit import per_account, per_address

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MAX_EMAIL = 254  # RFC 5321's longest address
PROFILE_FIELDS = ("first_name", "last_name", "city", "country")
MIN_PASSWORD, MAX_PASSWORD = 8, 128


@functools.cache
def _dummy_hash() -> str:
    """Return a hash made like a real one, to check unknown emails against (same cost, same time)."""
    user = User()
    user.set_password("not-a-real-password-0")
    return user.password_hash


def _json_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise APIError(400, "invalid_json", "The body must be a JSON object.")
    return body


def password_problem(password: str) -> str | None:
    """Return why ``password`` is too weak, or None."""
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        return f"The password must have {MIN_PASSWORD} to {MAX_PASSWORD} characters."
    if not (re.search(r"[A-Za-z]", password) and re.search(r"\d", password)):
        return "The password must contain letters and digits."
    return None


def _email(body: dict[str, Any]) -> str:
    email = body.get("email", "")
    return email.strip().lower() if isinstance(email, str) else ""


@bp.post("/auth/signup")
@per_address("SIGNUP_LIMIT_PER_ADDRESS")
@per_account("SIGNUP_LIMIT_PER_ACCOUNT")
def signup() -> tuple[Response, int]:
    """Create an account."""
    body = _json_body()
    email = _email(body)
    password, confirm = body.get("password"), body.get("password_confirm")
    if len(email) > MAX_EMAIL or not EMAIL.match(email):
        raise APIError(400, "invalid_email", "A valid email address is required.")
    if not isinstance(password, str) or (problem := password_problem(password)):
        raise APIError(400, "weak_password", problem if isinstance(password, str) else "A password is required.")
    if password != confirm:
        raise APIError(400, "password_mismatch", "password and password_confirm differ.")
    if db.session.scalar(select(User.id).where(func.lower(User.email) == email)):
        raise APIError(409, "email_taken", "An account with this email already exists.")
    profile = {f: body[f].strip()[:100] for f in PROFILE_FIELDS if isinstance(body.get(f), str) and body[f].strip()}
    user = User(email=email, **profile)
    user.set_password(password)
    db.session.add(user)
    try:
        db.session.commit()
    except IntegrityError as exc:  # two sign-ups raced past the check above
        db.session.rollback()
        raise APIError(409, "email_taken", "An account with this email already exists.") from exc
    return jsonify({"id": user.id, "email": user.email, "message": "Account created."}), 201


@bp.post("/auth/login")
@per_address("LOGIN_LIMIT_PER_ADDRESS")
@per_account("LOGIN_LIMIT_PER_ACCOUNT")
def login() -> Response:
    """Exchange email and password for a bearer token; as slow for an unknown email as for a known one."""
    body = _json_body()
    email, password = _email(body), body.get("password")
    password = password[:MAX_PASSWORD] if isinstance(password, str) else ""
    user = db.session.scalar(select(User).where(User.email == email)) if len(email) <= MAX_EMAIL else None
    if user is None:
        check_password_hash(_dummy_hash(), password)  # spend the same time as a real check
        raise APIError(401, "invalid_credentials", "Wrong email or password.")
    if not user.check_password(password):
        raise APIError(401, "invalid_credentials", "Wrong email or password.")
    token, lifetime = issue_token(user)
    return jsonify({"access_token": token, "token_type": "bearer", "expires_in": lifetime})
