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


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_units_in_flight_keep_their_plans_across_0004(backend, tmp_path, request):
    """Units written under 0003 (plan slots in ``checkpoint``, the artifact in the payload,
    extend requests counted in ``checkpoint``) read the same under 0004, and back."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    config = alembic_config(url)
    command.upgrade(config, "0003")
    engine = sa.create_engine(url)
    plan = {"artifacts": ["hidden_states", "ngram_counts"], "methods": ["rds"]}
    old_units = [  # (kind, checkpoint, start, payload)
        ("featurize", 1, 0, None),
        ("extend", 0, 0, {"methods": ["rds"]}),
        ("artifact", 2, 0, {**plan, "plan": 2, "artifact": "hidden_states", "extension": True}),
        ("artifact", 3, 0, {**plan, "plan": 2, "artifact": "ngram_counts", "extension": True}),
        ("finish", 2, 0, {**plan, "plan": 2, "extension": True}),
        ("extend", 1, 0, {"methods": ["dsir"]}),
    ]
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO datasets (id, name, num_examples, sha256, path, created_at) "
                "VALUES ('d', 'd', 1, 'x', '/d', CURRENT_TIMESTAMP)"
            )
        )
        connection.execute(
            sa.text(
                "INSERT INTO datastores (id, dataset_id, status, model_path, config, warmup_from,"
                " path, progress_done, progress_total, checkpoints, skipped, cancel_requested,"
                " warnings, created_at, updated_at) VALUES ('s', 'd', 'ready', '/m', '{}', '[]',"
                " '/s', 0, 0, '[]', '[]', false, '[]', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )
        units = sa.table(
            "work_units",
            *(sa.column(c) for c in ("datastore_id", "kind", "checkpoint", "start", "end")),
            *(sa.column(c) for c in ("state", "attempts", "created_at")),
            sa.column("payload", sa.JSON),
        )
        for kind, checkpoint, start, payload in old_units:
            connection.execute(
                units.insert().values(
                    datastore_id="s",
                    kind=kind,
                    checkpoint=checkpoint,
                    start=start,
                    end=start + 1,
                    state="pending",
                    attempts=0,
                    created_at=sa.func.now(),
                    payload=payload,
                )
            )

    def rows(*columns: str) -> list[tuple]:
        with engine.connect() as connection:
            select = f"SELECT {', '.join(columns)} FROM work_units ORDER BY id"
            return [tuple(r) for r in connection.execute(sa.text(select))]

    upgrade(url)
    assert schema_drift(url) == []
    from gradstore.db.units import PAYLOADS, UnitKind

    new = rows("kind", "checkpoint", "plan", "artifact", "payload")
    for kind, _, _, _, payload in new:  # every payload reads through its kind's model
        raw = payload if isinstance(payload, dict | None) else __import__("json").loads(payload)
        PAYLOADS[UnitKind(kind)].model_validate(raw or {})
    assert [r[:4] for r in new] == [
        ("featurize", 1, 0, ""),
        ("extend", 0, 0, ""),
        ("artifact", 0, 2, "hidden_states"),
        ("artifact", 0, 2, "ngram_counts"),
        ("finish", 0, 2, ""),
        ("extend", 0, 1, ""),
    ]
    command.downgrade(config, "0003")
    old = rows("kind", "checkpoint", "start", "payload")
    decoded = [
        (k, c, s, p if isinstance(p, dict | None) else __import__("json").loads(p))
        for k, c, s, p in old
    ]
    assert decoded == old_units
    engine.dispose()
