"""A plain (non-editable) wheel holds every namespaced package and data file and works.

The editable install the tests run under maps folders at import time; the wheel is what
the Docker image and users get, so it is built and used here on its own.
"""

from __future__ import annotations

import configparser
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (path,) = out.glob("gradstore-*.whl")
    return path


def test_wheel_has_namespaced_packages_data_and_entry_points(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for member in (
        "gradstore/cli/commands.py",
        "gradstore/db/queue.py",
        "gradstore/service/app.py",
        "gradstore/service/routes/datastores.py",
        "gradstore/worker/runner.py",
        "gradstore/worker/__main__.py",
        "gradstore/migrations/env.py",
        "gradstore/migrations/alembic.ini",
        "gradstore/migrations/script.py.mako",
        "gradstore/migrations/versions/0001_initial_schema.py",
    ):
        assert member in names, member
    tops = {n.split("/")[0] for n in names}
    assert not tops & {"service", "worker", "migrations", "db"}, tops
    (entry_file,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    entries = configparser.ConfigParser()
    entries.read_string(zipfile.ZipFile(wheel).read(entry_file).decode())
    assert dict(entries["gradstore.cli"]) == {
        "service": "gradstore.service.commands:register",
        "worker": "gradstore.worker.commands:register",
    }
    assert dict(entries["console_scripts"]) == {"gradstore": "gradstore.cli:main"}


def test_unpacked_wheel_imports_runs_migrations_and_module_entry_points(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    database = tmp_path / "db.sqlite"
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(site)!r})
        import gradstore, gradstore.service.app, gradstore.worker.runner
        from gradstore.migrations import upgrade
        for module in (gradstore, gradstore.service.app, gradstore.worker.runner):
            assert module.__file__.startswith({str(site)!r}), module.__file__
        upgrade("sqlite:///{database}")
        import sqlite3
        tables = {{r[0] for r in sqlite3.connect({str(database)!r}).execute(
            "select name from sqlite_master where type='table'")}}
        assert {{"datasets", "datastores", "work_units", "alembic_version"}} <= tables, tables
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
    for module in ("gradstore", "gradstore.worker"):
        helped = subprocess.run(
            [sys.executable, "-m", module, "--help"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
            timeout=300,
        )
        assert helped.returncode == 0, helped.stderr[-3000:]
        assert "Usage" in helped.stdout
