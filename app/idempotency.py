"""``Idempotency-Key`` for the routes that create a video: a client's retry gets the first answer.

The key is recorded (per user, unique) before the request runs, in its own committed row,
so two copies of one request racing each other cannot both run: the loser finds the row and
answers from it. Once the first request has answered, its status and body are stored and
every retry with the same key gets them back (with ``Idempotent-Replayed: true``). A retry
that arrives while the first is still running gets 409 ``request_in_progress``; the same
key on a different request gets 422 ``idempotency_key_reused``. Answers a retry could
change (429, 5xx) are not kept, and the retry runs, unless the request created something
(``APIError.final``: the 503 of an upload stored while the queue was down): that answer is
kept whatever its status, so a replay never creates a second video. The video a request
creates is bound to its key in the row's own commit (``created``); a request that died
before its answer was kept is answered from that video (``recover``) once it is abandoned. Keys are removed
by the sweeper after ``IDEMPOTENCY_KEY_SECONDS``.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from flask import Response, g, make_response, request
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from app.api.errors import APIError, error_response, from_domain
from app.auth import token_subject
from domain.errors import DomainError
from domain.extensions import db, get_settings
from domain.models import IdempotencyKey, utcnow

HEADER = "Idempotency-Key"
MAX_KEY = 255
# A request still "running" this long after it began died with its process: its key is free again.
ABANDONED_AFTER = timedelta(hours=1)


def json_fingerprint() -> str:
    """Fingerprint a JSON request: its route and its body."""
    return hashlib.sha256(request.path.encode() + b"\0" + request.get_data(cache=True)).hexdigest()


def route_fingerprint() -> str:
    """Fingerprint a form upload by its route alone: a replay is answered before its body is read.

    (Its length can't serve: multipart boundaries differ from one try to the next.)
    """
    return hashlib.sha256(request.path.encode()).hexdigest()


def _keep(status: int) -> bool:
    """Return whether an answer is final for its request (a retry would get the same)."""
    return status < 500 and status not in (409, 429)


def _replay(row: IdempotencyKey) -> Response:
    response = Response(row.body, status=row.status_code, mimetype="application/json")
    response.headers["Idempotent-Replayed"] = "true"
    return response


Recover = Callable[[str], Any]


def _keep_answer(key_id: int, response: Response) -> None:
    answer = {"status_code": response.status_code, "body": response.get_data(as_text=True)}
    db.session.execute(update(IdempotencyKey).where(IdempotencyKey.id == key_id).values(answer))
    db.session.commit()


def _claim(
    user_id: int, key: str, fingerprint: str, recover: Recover | None = None, again: bool = True
) -> int | Response | None:
    """Record the key for this request and return its row's id, or answer from the request that recorded it first.

    None: the key can't be recorded (the token's user is gone): the route runs without it and answers 401.
    """
    row = IdempotencyKey(user_id=user_id, key=key, fingerprint=fingerprint)
    db.session.add(row)
    try:
        db.session.flush()
        key_id = row.id  # read before the commit expires it, which would cost a SELECT
        db.session.commit()
        return key_id
    except IntegrityError:
        db.session.rollback()
    first = db.session.scalar(
        select(IdempotencyKey).where(IdempotencyKey.user_id == user_id, IdempotencyKey.key == key)
    )
    if first is None:  # released between our INSERT and this SELECT (try once more), or no such user
        return _claim(user_id, key, fingerprint, recover, again=False) if again else None
    if first.fingerprint != fingerprint:
        raise APIError(422, "idempotency_key_reused", f"This {HEADER} was used for a different request.")
    if first.status_code is not None:
        return _replay(first)
    if first.created_at < utcnow() - ABANDONED_AFTER:
        if first.video_id and recover:  # it died after creating its video: answer from the video, for good
            response = make_response(recover(first.video_id))
            _keep_answer(first.id, response)
            response.headers["Idempotent-Replayed"] = "true"
            return response
        db.session.delete(first)
        db.session.commit()
        return _claim(user_id, key, fingerprint, recover, again=False) if again else None
    raise APIError(
        409, "request_in_progress", f"A request with this {HEADER} is still running.", headers={"Retry-After": "1"}
    )


def created(video_id: str) -> None:
    """Bind the video this request created to its ``Idempotency-Key``, in the request's unit of work.

    Committed with the video's row: a request that dies after that commit, before its answer is
    kept, is answered from the video (``recover``) instead of run again.
    """
    key_id = g.get("idempotency_key_id")
    if key_id is not None:
        db.session.execute(update(IdempotencyKey).where(IdempotencyKey.id == key_id).values(video_id=video_id))


def _over_cap(user_id: int, key: str) -> bool:
    """Return whether ``key`` would be one more than the ``IDEMPOTENCY_KEYS_PER_USER`` the user may hold."""
    mine = IdempotencyKey.user_id == user_id
    held = db.session.scalar(select(func.count(IdempotencyKey.id)).where(mine))
    if int(held or 0) < get_settings().IDEMPOTENCY_KEYS_PER_USER:
        return False
    return db.session.scalar(select(IdempotencyKey.id).where(mine, IdempotencyKey.key == key)) is None


def idempotent(
    fingerprint: Callable[[], str], recover: Recover | None = None, owns: Callable[..., bool] | None = None
) -> Callable[[Any], Any]:
    """Make a route that creates something answer a retried request (same key) with its first answer.

    Put it right under ``@bp.route``, so it sees the final answer of the decorators below.
    ``recover(video_id)`` answers for a first request that died after ``created``.
    ``owns(user_id, **route_arguments)``: whether the route's object is the user's; a key on
    anything else is never stored (the route answers 404 unkeyed). A user holds at most
    ``IDEMPOTENCY_KEYS_PER_USER`` keys: past that, 429 ``too_many_idempotency_keys``.
    """

    def decorate(view: Any) -> Any:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            key = request.headers.get(HEADER)
            subject = token_subject()
            if key is None or subject is None:  # no key, or no valid token (the route answers 401)
                return view(*args, **kwargs)
            if not 1 <= len(key) <= MAX_KEY or not key.isascii() or not key.isprintable():
                raise APIError(
                    400, "invalid_idempotency_key", f"{HEADER} must be 1 to {MAX_KEY} printable ASCII characters."
                )
            if owns is not None and not owns(int(subject), **kwargs):
                return view(*args, **kwargs)
            if _over_cap(int(subject), key):  # a held key is still answered (a replay)
                raise APIError(
                    429,
                    "too_many_idempotency_keys",
                    f"Too many {HEADER}s in use; they are kept {get_settings().IDEMPOTENCY_KEY_SECONDS} s.",
                    headers={"Retry-After": "3600"},
                )
            claimed = _claim(int(subject), key, fingerprint(), recover)
            if isinstance(claimed, Response):
                return claimed
            if claimed is None:
                return view(*args, **kwargs)
            g.idempotency_key_id = claimed
            final = False
            try:
                response = make_response(view(*args, **kwargs))
            except (APIError, DomainError) as caught:
                exc = from_domain(caught) if isinstance(caught, DomainError) else caught
                response, _ = error_response(exc.status, exc.code, exc.message, exc.extra)
                response.status_code = exc.status
                response.headers.update(exc.headers)
                final = exc.final
            except BaseException:
                db.session.rollback()  # an unexpected failure: nothing of the request's own work is kept
                _after_failure(claimed, recover)
                raise
            if final or _keep(response.status_code):
                _keep_answer(claimed, response)
            else:  # an answer a retry could change: the request's work (a reopened upload) stays, the key goes
                _release(claimed)
            return response

        return wrapped

    return decorate


def _release(key_id: int) -> None:
    """Free the key for a retry, unless its request created a video (committed with ``created``); commit."""
    db.session.execute(delete(IdempotencyKey).where(IdempotencyKey.id == key_id, IdempotencyKey.video_id.is_(None)))
    db.session.commit()


def _after_failure(key_id: int, recover: Recover | None) -> None:
    """After an unexpected failure: answer the key from the video its request created, if it did, else free it.

    The client sees this request fail; its retry gets the video's answer instead of making a
    second one. When even that can't be written (the database is gone), the key stays taken and
    is answered from the video once abandoned.
    """
    try:
        video_id = db.session.scalar(select(IdempotencyKey.video_id).where(IdempotencyKey.id == key_id))
        if video_id and recover:
            _keep_answer(key_id, make_response(recover(video_id)))
        else:
            _release(key_id)
    except Exception:
        db.session.rollback()
