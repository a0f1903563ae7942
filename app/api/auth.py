"""Sign up and log in."""

from __future__ import annotations

import functools
import re
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash
from zxcvbn import zxcvbn

from app import sessions
from app.api import BEARER, bp, error_answers
from app.api.errors import APIError
from app.api.schemas import MAX_PASSWORD, MIN_PASSWORD, AccountSchema, LoginSchema, SignupSchema, TokenSchema
from app.auth import issue_token, login_required, token_claims
from app.ratelimit import per_account, per_account_address, per_address
from domain.extensions import db
from domain.models import User

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
PROFILE_FIELDS = ("first_name", "last_name", "city", "country")
MIN_SCORE = 3  # zxcvbn's "safely unguessable: moderate protection from an offline slow-hash scenario"


@functools.cache
def _dummy_hash() -> str:
    """Return a hash made like a real one, to check unknown emails against (same cost, same time)."""
    user = User()
    user.set_password("not-a-real-password-0")
    return user.password_hash


def password_problem(password: str, email: str = "") -> str | None:
    """Return why ``password`` is too weak, or None.

    At least ``MIN_PASSWORD`` characters, and not guessable: zxcvbn (bundled lists of common
    passwords, words and names, with keyboard walks, repeats, sequences, dates and l33t
    spellings) must score it 3 or more ("safely unguessable"), the account's email counted
    as something an attacker knows.
    """
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        return f"The password must have {MIN_PASSWORD} to {MAX_PASSWORD} characters."
    if zxcvbn(password[:72], user_inputs=[email, *email.split("@")])["score"] < MIN_SCORE:
        return "The password is too common or too easy to guess: use a few unrelated words, or a password manager."
    return None


@bp.route("/auth/signup", methods=["POST"])
@bp.arguments(SignupSchema)
@bp.response(201, AccountSchema)
@error_answers(400, 409, 413, 429)
@per_address("SIGNUP_LIMIT_PER_ADDRESS")
@per_account("SIGNUP_LIMIT_PER_ACCOUNT")
def signup(body: dict[str, Any]) -> dict[str, Any]:
    """Create an account.

    Rate-limited per client address and per email (429 with Retry-After).
    """
    email = body["email"].strip().lower()
    if not EMAIL.match(email):
        raise APIError(400, "invalid_email", "A valid email address is required.")
    if problem := password_problem(body["password"], email):
        raise APIError(400, "weak_password", problem)
    if body["password"] != body["password_confirm"]:
        raise APIError(400, "password_mismatch", "password and password_confirm differ.")
    if db.session.scalar(select(User.id).where(func.lower(User.email) == email)):
        raise APIError(409, "email_taken", "An account with this email already exists.")
    profile = {f: body[f].strip() for f in PROFILE_FIELDS if body.get(f) and body[f].strip()}
    user = User(email=email, **profile)
    user.set_password(body["password"])
    db.session.add(user)
    try:
        db.session.commit()
    except IntegrityError as exc:  # two sign-ups raced past the check above
        db.session.rollback()
        raise APIError(409, "email_taken", "An account with this email already exists.") from exc
    return {"id": user.id, "email": user.email, "message": "Account created."}


@bp.route("/auth/login", methods=["POST"])
@bp.arguments(LoginSchema)
@bp.response(200, TokenSchema)
@error_answers(400, 401, 413, 429)
@per_address("LOGIN_LIMIT_PER_ADDRESS")
@per_account_address("LOGIN_LIMIT_PER_ACCOUNT_ADDRESS")
def login(body: dict[str, Any]) -> dict[str, Any]:
    """Exchange email and password for a bearer token.

    As slow for an unknown email as for a known one. All attempts are rate-limited per
    client address, refused ones per account and address; an address that failed on an
    account waits a delay that grows with the account's failures (429 with Retry-After).
    Another address is never held back: an attacker can't lock the owner out.
    """
    email, password = body["email"].strip().lower(), body["password"]
    if wait := sessions.login_wait(email):
        raise APIError(
            429, "login_delayed", f"Too many failed logins; try again in {wait} s.", headers={"Retry-After": str(wait)}
        )
    user = db.session.scalar(select(User).where(User.email == email))
    if user is None:
        check_password_hash(_dummy_hash(), password)  # spend the same time as a real check
        sessions.login_failed(email)
        raise APIError(401, "invalid_credentials", "Wrong email or password.")
    if not user.check_password(password):
        if user.needs_rehash():  # a weaker, faster hash: spend what an unknown email costs, so neither shows
            check_password_hash(_dummy_hash(), password)
        sessions.login_failed(email)
        raise APIError(401, "invalid_credentials", "Wrong email or password.")
    if user.needs_rehash():  # made with weaker parameters than today's: stronger from this login on
        user.set_password(password)
        db.session.commit()
    token, lifetime = issue_token(user)
    return {"access_token": token, "token_type": "bearer", "expires_in": lifetime}


@bp.route("/auth/logout", methods=["POST"])
@bp.doc(security=BEARER)
@bp.response(204)
@error_answers(401)
def logout() -> None:
    """Revoke the request's token: it is refused from now until it would have expired (401 ``token_revoked``)."""
    claims = token_claims()
    sessions.revoke(str(claims["jti"]), float(claims["exp"]))


@bp.route("/auth/check", methods=["GET"])
@bp.doc(security=BEARER)
@bp.response(204)
@error_answers(401)
@login_required
def check_token() -> None:
    """Answer 204 for a valid token, 401 otherwise.

    nginx asks this before it accepts an upload's body (``auth_request``), so nobody
    without an account can make it store a gigabyte.
    """
