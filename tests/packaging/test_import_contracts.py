"""The import contracts of pyproject.toml hold (import-linter, through .ci/lint-imports), and
they do catch a core module importing the database layer or the service stack."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]

CORE_LAYERS = CONTRACTS["contracts"][0]  # the core's own layers come first
CORE_START, CORE_END = "# -- the core's own layers", "# -- end of the core's own layers"

pytest.importorskip("importlinter", reason="import-linter comes with the dev extra")


LINT = (
    "import sys; from importlinter.cli import lint_imports_command; "
    "sys.exit(lint_imports_command())"
)


def without_core_layers(pyproject: str) -> str:
    """The contracts between the folders only (the core's layers name modules that a small
    stand-in package does not have)."""
    start, end = pyproject.index(CORE_START), pyproject.index(CORE_END)
    return pyproject[:start] + pyproject[end + len(CORE_END) :]


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
    config.write_text(without_core_layers((ROOT / "pyproject.toml").read_text()))
    done = subprocess.run(
        [sys.executable, "-c", LINT, "--config", str(config), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        timeout=300,
    )
    assert done.returncode != 0, done.stdout
    layers = [c for c in CONTRACTS["contracts"] if c["name"] != CORE_LAYERS["name"]]
    broken = [c["name"] for c in layers if f"{c['name']} BROKEN" in done.stdout]
    assert len(broken) == len(layers), done.stdout[-3000:]
    for line in (
        "gradstore.core -> sqlalchemy",
        "gradstore.core -> gradstore.db.models",
        "gradstore.worker -> gradstore.service",
    ):
        assert line in done.stdout


def test_the_core_layers_catch_a_lower_layer_importing_a_higher_one(tmp_path):
    """A store module importing the selection layer breaks the core's layers contract."""
    files = {
        "gradstore/__init__.py": "",
        "gradstore/store/__init__.py": "import gradstore.selection\n",
    }
    layers = [layer for line in CORE_LAYERS["layers"] for layer in line.split(" | ")]
    for layer in layers:
        path = tmp_path / (layer.replace(".", "/") + "/__init__.py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(files.get(str(path.relative_to(tmp_path)), ""))
    (tmp_path / "gradstore/__init__.py").write_text("")
    pyproject = (ROOT / "pyproject.toml").read_text()
    start, end = pyproject.index(CORE_START), pyproject.index(CORE_END)
    config = tmp_path / "pyproject.toml"
    config.write_text('[tool.importlinter]\nroot_packages = ["gradstore"]\n' + pyproject[start:end])
    done = subprocess.run(
        [sys.executable, "-c", LINT, "--config", str(config), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        timeout=300,
    )
    assert done.returncode != 0, done.stdout
    assert "gradstore.store -> gradstore.selection" in done.stdout, done.stdout[-3000:]


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's components of more than one module: each one is an import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_strongly_connected_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(graph) == [{"a", "b", "c"}]


def test_no_core_module_imports_itself_through_others():
    """Single modules, inside one layer too, and imports inside functions count; only
    TYPE_CHECKING imports are left out."""
    import grimp

    built = grimp.build_graph("gradstore", exclude_type_checking_imports=True, cache_dir=None)
    graph = {m: built.find_modules_directly_imported_by(m) for m in built.modules}
    assert strongly_connected(graph) == []
