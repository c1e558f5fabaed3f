"""The import contracts of pyproject.toml hold (import-linter, through .ci/lint-imports), and
they do catch a core module importing the database layer or the service stack."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]

pytest.importorskip("importlinter", reason="import-linter comes with the dev extra")


def test_the_contracts_hold():
    done = subprocess.run(
        [str(ROOT / ".ci" / "lint-imports")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"Contracts: {len(CONTRACTS['contracts'])} kept, 0 broken." in done.stdout


def test_a_core_module_importing_the_layers_breaks_them(tmp_path):
    """The same contracts over a small package laid out like gradstore, with violations."""
    stack = CONTRACTS["contracts"][-1]["protected_modules"]
    files = {
        "gradstore/__init__.py": "",
        "gradstore/core.py": "import sqlalchemy\nfrom gradstore.db import models\n",
        "gradstore/db/__init__.py": "",
        "gradstore/db/models.py": "import gradstore.core\n",
        "gradstore/service/__init__.py": "".join(f"import {m}\n" for m in stack),
        "gradstore/worker/__init__.py": "import gradstore.service\n",
        "gradstore/migrations/__init__.py": "import gradstore.db\n",
    }
    for relative, text in files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    config = tmp_path / "pyproject.toml"
    config.write_text((ROOT / "pyproject.toml").read_text())
    script = textwrap.dedent(
        """
        import sys
        from importlinter.cli import lint_imports_command
        sys.exit(lint_imports_command())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "--config", str(config), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        timeout=300,
    )
    assert done.returncode != 0, done.stdout
    broken = [c["name"] for c in CONTRACTS["contracts"] if f"{c['name']} BROKEN" in done.stdout]
    assert len(broken) == len(CONTRACTS["contracts"]), done.stdout[-3000:]
    for line in (
        "gradstore.core -> sqlalchemy",
        "gradstore.core -> gradstore.db.models",
        "gradstore.worker -> gradstore.service",
    ):
        assert line in done.stdout
