"""The worker and database commands as the CLI runs them."""

from __future__ import annotations

import time

from typer.testing import CliRunner

from gradstore.cli import app


def test_db_upgrade_then_a_worker_with_nothing_to_do_exits(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADSTORE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("GRADSTORE_DATABASE_URL", raising=False)
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    started = time.monotonic()
    result = runner.invoke(app, ["worker", "--once", "--poll-interval", "0.01"])
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started < 10


def test_service_commands_offer_their_options():
    runner = CliRunner()
    serve = runner.invoke(app, ["serve", "--help"]).output
    for option in ("--host", "--port", "--data-dir", "--workers"):
        assert option in serve
    worker = runner.invoke(app, ["worker", "--help"]).output
    assert "--once" in worker and "--poll-interval" in worker and "--parent-pid" not in worker
