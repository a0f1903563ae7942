"""Sign up and log in."""

from __future__ import annotations

import re
from typing import Any

from flask import Response, jsonify, request
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from app.api import bp
from app.api.errors import APIError
from app.auth import issue_token
from app.extensions import db
from app.models import User

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
PROFILE_FIELDS = ("first_name", "last_name", "city", "country")
MIN_PASSWORD = 8


def _json_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise APIError(400, "invalid_json", "The body must be a JSON object.")
    return body


def password_problem(password: str) -> str | None:
    """Return why ``password`` is too weak, or None."""
    if len(password) < MIN_PASSWORD:
        return f"The password must have at least {MIN_PASSWORD} characters."
    if not (re.search(r"[A-Za-z]", password) and re.search(r"\d", password)):
        return "The password must contain letters and digits."
    return None


@bp.post("/auth/signup")
def signup() -> tuple[Response, int]:
    """Create an account."""
    body = _json_body()
    email = str(body.get("email", "")).strip().lower()
    password, confirm = body.get("password"), body.get("password_confirm")
    if not EMAIL.match(email):
        raise APIError(400, "invalid_email", "A valid email address is required.")
    if not isinstance(password, str) or (problem := password_problem(password)):
        raise APIError(400, "weak_password", problem if isinstance(password, str) else "A password is required.")
    if password != confirm:
        raise APIError(400, "password_mismatch", "password and password_confirm differ.")
    if db.session.scalar(select(User.id).where(func.lower(User.email) == email)):
        raise APIError(409, "email_taken", "An account with this email already exists.")
    user = User(email=email, **{f: str(body[f])[:100] for f in PROFILE_FIELDS if body.get(f)})
    user.set_password(password)
    db.session.add(user)
    try:
        db.session.commit()
    except IntegrityError as exc:  # two sign-ups raced past the check above
        db.session.rollback()
        raise APIError(409, "email_taken", "An account with this email already exists.") from exc
    return jsonify({"id": user.id, "email": user.email, "message": "Account created."}), 201


@bp.post("/auth/login")
def login() -> Response:
    """Exchange email and password for a bearer token."""
    body = _json_body()
    email = str(body.get("email", "")).strip().lower()
    user = db.session.scalar(select(User).where(User.email == email))
    if user is None or not user.check_password(str(body.get("password", ""))):
        raise APIError(401, "invalid_credentials", "Wrong email or password.")
    token, lifetime = issue_token(user)
    return jsonify({"access_token": token, "token_type": "bearer", "expires_in": lifetime})
