"""Each role's own database user, allowed only its rows, logged in by IAM token (domain/database.py)."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable

import pytest
from flask import Flask
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from deploy import migrate
from domain import database
from domain.extensions import db


@pytest.fixture
def postgres(database_url: str) -> str:
    if not database_url.startswith("postgresql"):
        pytest.skip("roles and grants are PostgreSQL's (CI runs on it)")
    return database_url


def as_user(url: str, user: str) -> str:
    return make_url(url).set(username=user, password="unused-here").render_as_string(hide_password=False)


def test_each_role_gets_its_own_user_and_only_its_rows(app: Flask, postgres: str) -> None:
    with app.app_context():
        tables = [t.name for t in db.metadata.sorted_tables]
        with db.engine.begin() as connection:
            given = migrate.grant(connection, tables)
        with db.engine.begin() as connection:  # granting again (every release) changes nothing
            assert migrate.grant(connection, tables) == given
    assert given["videoproc_worker"] == ["videos"] and set(given["videoproc_web"]) == set(tables)

    worker = create_engine(as_user(postgres, "videoproc_worker"))  # the local server trusts the login
    with worker.begin() as connection:
        assert connection.execute(text("SELECT count(*) FROM videos")).scalar_one() == 0
        connection.execute(text("UPDATE videos SET title = title"))
        assert connection.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
    refused = [
        "SELECT password_hash FROM users",  # no account, no password hash
        "UPDATE alembic_version SET version_num = version_num",
        "CREATE TABLE mine (id int)",  # no schema change of any kind
        "ALTER TABLE videos ADD COLUMN x int",
        "DROP TABLE videos",
        "TRUNCATE videos",
    ]
    with worker.begin() as connection:  # the outbox: it writes a final state's event, reading no secret
        connection.execute(text("SELECT id, events FROM webhook_endpoints WHERE user_id = 0 AND disabled_at IS NULL"))
        may = "SELECT has_table_privilege('videoproc_worker', :table, :right)"
        assert all(
            connection.execute(text(may), {"table": t, "right": "INSERT"}).scalar_one()
            for t in ("webhook_events", "webhook_deliveries")
        )
        assert not connection.execute(text(may), {"table": "webhook_attempts", "right": "INSERT"}).scalar_one()
    refused += ["SELECT secret FROM webhook_endpoints", "SELECT url FROM webhook_endpoints"]
    refused += ["UPDATE webhook_endpoints SET disabled_at = NULL", "SELECT body FROM webhook_events"]
    for statement in refused:
        with pytest.raises(ProgrammingError, match=r"permission denied|must be owner"), worker.begin() as c:
            c.execute(text(statement))
    web = create_engine(as_user(postgres, "videoproc_web"))
    with web.begin() as connection:
        assert connection.execute(text("SELECT count(*) FROM users")).scalar_one() == 0
        with pytest.raises(ProgrammingError, match="permission denied"):
            connection.execute(text("CREATE TABLE mine (id int)"))
    worker.dispose()
    web.dispose()


def test_the_admin_login_is_read_for_the_migration_only() -> None:
    env = {"DATABASE_URL": "postgresql://videoproc_web@db.internal:5432/videoproc?sslmode=require"}
    url = make_url(migrate.admin_url(env, '{"username": "postgres", "password": "p@ss/word"}'))
    assert (url.username, url.password, url.host, url.query["sslmode"]) == (
        "postgres",
        "p@ss/word",
        "db.internal",
        "require",
    )
    assert migrate.admin_url(env, None) == env["DATABASE_URL"]


def test_every_new_connection_logs_in_with_an_iam_token(
    make_app: Callable[..., Flask], postgres: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[tuple[str, int, str]] = []
    real = database.auth_token

    def recorded(app: Flask, host: str, port: int, user: str) -> str:
        asked.append((host, port, user))
        token = real(app, host, port, user)  # botocore's own signer (offline): checked below
        parsed = urllib.parse.urlsplit("https://" + token)
        query = urllib.parse.parse_qs(parsed.query)
        assert (parsed.hostname, parsed.port) == (host, port)
        assert query["Action"] == ["connect"] and query["DBUser"] == [user] and query["X-Amz-Signature"]
        return token

    monkeypatch.setattr(database, "auth_token", recorded)
    url = make_url(as_user(postgres, "videoproc_worker")).set(password=None).render_as_string(hide_password=False)
    flask_app = make_app({"DATABASE_URL": url, "DATABASE_IAM_AUTH": "true"})
    with flask_app.app_context():
        assert db.session.execute(text("SELECT current_user")).scalar_one() == "videoproc_worker"
        db.session.remove()
        db.engine.dispose()
        db.session.execute(text("SELECT 1"))
    parsed = make_url(url)
    assert asked == [(parsed.host, parsed.port or 5432, "videoproc_worker")] * 2, "a fresh token per connection"
