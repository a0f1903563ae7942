"""Migrate the schema as the database's owner, then give each role its own least-privilege user.

Usage: python -m deploy.migrate   (``videoproc-migrate.service``, on web instances, before gunicorn)

The owner's login is read now, from Secrets Manager (``DATABASE_ADMIN_SECRET_ARN``: RDS's
managed master secret, which RDS rotates every 7 days), and used for this run only: no
process keeps it, so a rotation breaks nothing. Without that variable (a local database, an
existing ``DATABASE_URL``) ``DATABASE_URL`` is used as it is.

On PostgreSQL it then makes sure of one login per role (``USERS``), each allowed only the
rows it works on and nothing else: no table of its own, no schema change, no ``TRUNCATE``,
``alembic_version`` read-only. On RDS each gets ``rds_iam``: it logs in with an IAM token
(``domain/database.py``), never a password. The grants are given again after every migration,
so a new table is covered by the release that adds it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping

from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url

# role -> (its database user, the tables it may change: None for every table of the app)
USERS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "web": ("videoproc_web", None),  # accounts, uploads, quotas, idempotency keys, videos
    "worker": (  # the job's row only (and below, its webhook events): no account, no password hash, no secret
        "videoproc_worker",
        ("videos",),
    ),
    "ops": ("videoproc_ops", None),  # the sweeper: expiry, reconciliation, pruning
}
ROW_RIGHTS = "SELECT, INSERT, UPDATE, DELETE"
# Narrower rights on tables a user may not change: the worker writes a final state's webhook event and
# its deliveries (the outbox, domain/webhooks.record), reading of the endpoints only what picks them,
# never their URLs or signing secrets (the web instances make the deliveries).
NARROW: dict[str, dict[str, str]] = {
    "videoproc_worker": {
        "webhook_endpoints": "SELECT (id, user_id, events, disabled_at)",
        "webhook_events": "INSERT",
        "webhook_deliveries": "INSERT",
    }
}
MIGRATION_LOCK = 727274  # migrations/env.py holds it while it migrates


def admin_url(env: Mapping[str, str], secret: str | None) -> str:
    """Return ``DATABASE_URL`` with the owner's login from ``secret`` (RDS's JSON) in place of its own."""
    url = make_url(env["DATABASE_URL"])
    if secret is None:
        return url.render_as_string(hide_password=False)
    login = json.loads(secret)
    return url.set(username=login["username"], password=login["password"]).render_as_string(hide_password=False)


def grant(connection: Connection, tables: list[str]) -> dict[str, list[str]]:
    """Create each role's user when missing and give it its rights on ``tables``; return what each may change."""
    # The migrations' own lock (migrations/env.py): web instances boot together, and two CREATE ROLE
    # or GRANT statements on the same object at once fail ("tuple concurrently updated").
    connection.execute(text(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
    database = connection.execute(text("SELECT current_database()")).scalar_one()
    has_rds_iam = connection.execute(text("SELECT 1 FROM pg_roles WHERE rolname = 'rds_iam'")).first() is not None
    given: dict[str, list[str]] = {}
    for user, writable in USERS.values():
        if connection.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :u"), {"u": user}).first() is None:
            connection.execute(text(f'CREATE ROLE "{user}" LOGIN'))
        if has_rds_iam:
            connection.execute(text(f'GRANT rds_iam TO "{user}"'))
        connection.execute(text(f'GRANT CONNECT ON DATABASE "{database}" TO "{user}"'))
        connection.execute(text(f'GRANT USAGE ON SCHEMA public TO "{user}"'))
        connection.execute(text(f'REVOKE ALL ON ALL TABLES IN SCHEMA public FROM "{user}"'))
        mine = [t for t in tables if writable is None or t in writable]
        for table in mine:
            connection.execute(text(f'GRANT {ROW_RIGHTS} ON TABLE "{table}" TO "{user}"'))
        for table, rights in NARROW.get(user, {}).items():
            if table in tables:
                connection.execute(text(f'GRANT {rights} ON TABLE "{table}" TO "{user}"'))
        connection.execute(text(f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO "{user}"'))
        connection.execute(text(f'GRANT SELECT ON TABLE alembic_version TO "{user}"'))
        given[user] = mine
    return given


def main() -> int:
    """Upgrade to the release's head as the owner, then grant every role's user."""
    import flask_migrate

    from app import create_app
    from config import load_settings
    from domain.extensions import db

    env = dict(os.environ)
    secret = None
    if arn := env.get("DATABASE_ADMIN_SECRET_ARN"):
        import boto3

        endpoint = env.get("AWS_ENDPOINT_URL") or None
        secret = boto3.client("secretsmanager", endpoint_url=endpoint).get_secret_value(SecretId=arn)["SecretString"]
    env |= {"DATABASE_URL": admin_url(env, secret), "DATABASE_IAM_AUTH": "false"}
    app = create_app(load_settings(env))
    with app.app_context():
        flask_migrate.upgrade()
        if db.engine.dialect.name != "postgresql":
            print("migrated; no users to grant on this database")
            return 0
        tables = [t.name for t in db.metadata.sorted_tables]
        with db.engine.begin() as connection:
            given = grant(connection, tables)
    for user, mine in given.items():
        print(f"migrated; {user} may change {', '.join(mine)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
