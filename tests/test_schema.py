"""The migrations build the schema the models describe (against PostgreSQL in CI)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import Flask
from sqlalchemy import Column, MetaData, Table, create_engine, select, text
from sqlalchemy.engine import make_url

from domain.extensions import db
from domain.models import UTCDateTime
from tests.conftest import ROOT


def test_the_migrated_database_matches_the_models(app: Flask) -> None:
    with app.app_context(), db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, db.metadata) == [], "a model change without its migration"
        config = Config()
        config.set_main_option("script_location", str(ROOT / "migrations"))
        head = ScriptDirectory.from_config(config).get_current_head()
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == head


def test_ci_runs_on_postgresql(database_url: str) -> None:
    """CI's suite runs on the production database; only a machine without PostgreSQL falls back to SQLite."""
    if os.environ.get("CI"):
        assert make_url(database_url).get_backend_name() == "postgresql"


def test_times_come_back_aware_utc_on_sqlite_too(tmp_path: Path) -> None:
    """One column type (``UTCDateTime``) instead of a time-zone fix at every reader."""
    engine = create_engine(f"sqlite:///{tmp_path / 'times.db'}")
    table = Table("times", MetaData(), Column("at", UTCDateTime()))
    table.create(engine)
    paris = datetime(2026, 12, 7, 12, 0, tzinfo=timezone(timedelta(hours=1)))
    with engine.begin() as conn:
        conn.execute(table.insert().values(at=paris))
        stored = conn.execute(select(table.c.at)).scalar_one()
    assert stored == paris and stored.tzinfo == UTC and stored.hour == 11
    engine.dispose()
