"""Alembic is the only way the schema is made: fresh SQLite and PostgreSQL, and the CLI."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from typer.testing import CliRunner

from gradstore.cli import app as cli_app
from gradstore.db.models import Base
from gradstore.migrations import alembic_config, upgrade


def head() -> str:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def schema_drift(url: str) -> list:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection)
        assert context.get_current_revision() == head()
        drift = compare_metadata(context, Base.metadata)
    engine.dispose()
    return drift


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrations_build_exactly_the_models(backend, tmp_path, request):
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'fresh.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    upgrade(url)
    upgrade(url)  # idempotent: a restarted server runs it again
    assert schema_drift(url) == []
    command.downgrade(alembic_config(url), "base")
    engine = sa.create_engine(url)
    assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()
    upgrade(url)
    assert schema_drift(url) == []


def test_db_upgrade_command_uses_the_configured_data_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # alembic.ini is found inside the package, not in the cwd
    monkeypatch.delenv("GRADSTORE_DATABASE_URL", raising=False)
    monkeypatch.setenv("GRADSTORE_DATA_DIR", str(tmp_path / "home"))
    result = CliRunner().invoke(cli_app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    database = tmp_path / "home" / "gradstore.db"
    assert database.exists() and schema_drift(f"sqlite:///{database}") == []
