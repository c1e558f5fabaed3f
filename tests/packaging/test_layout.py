"""The package layout: namespaced import names, layering without cycles, extras.

The source folders service/, worker/, db/ and migrations/ install as gradstore.service,
gradstore.worker, gradstore.db and gradstore.migrations; each layer imports only the ones
below it (core ← db ← {service, worker, migrations}), which is checked statically here.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SERVICE_STACK = {
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlalchemy",
    "alembic",
    "psycopg",
    "prometheus_client",
    "pydantic_settings",
    "multipart",
}
# source folder -> import name
FOLDERS = {
    "gradstore": "gradstore",
    "db": "gradstore.db",
    "service": "gradstore.service",
    "worker": "gradstore.worker",
    "migrations": "gradstore.migrations",
}
# what each layer may import of the others (besides the core, which every layer may use)
ALLOWED = {
    "gradstore": set(),
    "db": set(),
    "migrations": {"gradstore.db"},
    "worker": {"gradstore.db"},
    "service": {"gradstore.db", "gradstore.migrations"},
}
LAYERS = {"gradstore.db", "gradstore.service", "gradstore.worker", "gradstore.migrations"}


def imported_modules(source: str) -> set[str]:
    """Every absolute module name an import statement in ``source`` names."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def layer_of(module: str) -> str | None:
    for layer in LAYERS:
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


def violations(folder: str, modules: set[str]) -> set[str]:
    allowed = ALLOWED[folder]
    bad = set()
    for module in modules:
        layer = layer_of(module)
        if layer is not None and layer != FOLDERS[folder] and layer not in allowed:
            bad.add(module)
        top = module.partition(".")[0]
        if folder == "gradstore" and top in SERVICE_STACK:
            bad.add(module)
        if top in {"service", "worker", "migrations", "db"}:  # a bare, unnamespaced import
            bad.add(module)
    return bad


def test_the_checker_sees_a_forbidden_import():
    code = "from gradstore.worker.runner import Worker\nimport sqlalchemy\nfrom service import x\n"
    assert violations("service", imported_modules(code)) == {
        "gradstore.worker.runner",
        "gradstore.worker.runner.Worker",
        "service",
        "service.x",
    }
    assert "sqlalchemy" in violations("gradstore", imported_modules(code))
    assert violations("service", imported_modules("from gradstore.db.models import A")) == set()


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_each_layer_imports_only_the_layers_below_it(folder):
    found = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        if folder == "gradstore" and path.parent.name in FOLDERS:  # none exist; be explicit
            continue
        bad = violations(folder, imported_modules(path.read_text()))
        if bad:
            found[str(path.relative_to(ROOT))] = sorted(bad)
    assert not found, f"imports across layers: {found}"


def test_every_source_package_is_installed_under_the_gradstore_namespace():
    setuptools = PYPROJECT["tool"]["setuptools"]
    package_dir = setuptools["package-dir"]
    assert {v: k for k, v in package_dir.items()} == {
        folder: name for folder, name in FOLDERS.items() if folder != "gradstore"
    }
    expected = set()
    for folder, name in FOLDERS.items():
        for init in (ROOT / folder).rglob("*.py"):
            if "__pycache__" in init.parts:
                continue
            relative = init.parent.relative_to(ROOT / folder).parts
            expected.add(".".join((name, *relative)))
    assert set(setuptools["packages"]) == expected
    assert all(p == "gradstore" or p.startswith("gradstore.") for p in setuptools["packages"])


def test_extras_keep_the_core_small_and_the_faiss_wheels_apart():
    core = " ".join(PYPROJECT["project"]["dependencies"])
    extras = PYPROJECT["project"]["optional-dependencies"]
    for name in ("fastapi", "sqlalchemy", "alembic", "uvicorn", "psycopg", "faiss"):
        assert name not in core
    assert [r for r in extras["cpu"] if "faiss" in r] == ["faiss-cpu>=1.8"]
    assert not any("faiss-cpu" in r for r in extras["gpu"])
    assert any(r.startswith("faiss-gpu") for r in extras["gpu"])
    assert not any("faiss" in r for r in extras["service"])
    assert "gradstore[cpu,service]" in extras["dev"]
    # matplotlib only for the HTML report, which the service serves (so `.[dev]` has it)
    assert "matplotlib" not in core
    assert [r for r in extras["report"] if "matplotlib" in r] == ["matplotlib>=3.7"]
    assert "gradstore[report]" in extras["service"]


def test_core_imports_and_cli_runs_without_the_service_stack(tmp_path):
    """With fastapi, sqlalchemy & co. made unimportable, the core and its CLI still work."""
    script = textwrap.dedent(
        f"""
        import importlib, pkgutil, sys
        BLOCKED = set({sorted(SERVICE_STACK)!r})

        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] in BLOCKED:
                    raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)")
                return None

        sys.meta_path.insert(0, Blocker())
        import gradstore
        layers = ("gradstore.db", "gradstore.service", "gradstore.worker", "gradstore.migrations")
        for info in pkgutil.walk_packages(gradstore.__path__, "gradstore."):
            if info.name.startswith(layers):
                continue
            importlib.import_module(info.name)
        from typer.testing import CliRunner
        from gradstore.cli import app
        runner = CliRunner()
        assert runner.invoke(app, ["build", "--help"]).exit_code == 0
        result = runner.invoke(app, ["serve", "--port", "1"])
        assert result.exit_code == 1, result.output
        assert "pip install 'gradstore[service]'" in result.output, result.output
        assert not BLOCKED & {{m.partition(".")[0] for m in sys.modules}}
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_without_a_faiss_extra_the_commands_that_need_it_say_what_to_install(tmp_path):
    script = textwrap.dedent(
        """
        import sys

        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] == "faiss":
                    raise ModuleNotFoundError("No module named 'faiss' (blocked)")
                return None

        sys.meta_path.insert(0, Blocker())
        import os
        os.makedirs("s")
        for name in ("p", "t", "s/manifest.json"):  # the flags' own checks pass
            open(name, "w").close()
        from typer.testing import CliRunner
        from gradstore.cli import app
        for args in (["build", "--dataset", "p", "--model", "m", "--out", "o"],
                     ["select", "--store", "s", "--targets", "t", "--top-k", "1"], ["demo"]):
            result = CliRunner().invoke(app, args)
            assert result.exit_code == 1, result.output
            assert "pip install 'gradstore[cpu]'" in result.output, result.output
        assert "faiss" not in sys.modules
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_without_the_report_extra_the_report_says_what_to_install(tmp_path):
    script = textwrap.dedent(
        """
        import sys

        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] == "matplotlib":
                    raise ModuleNotFoundError("No module named 'matplotlib' (blocked)")
                return None

        sys.meta_path.insert(0, Blocker())
        from gradstore.errors import MissingExtraError
        from gradstore.report.plots import bar_chart
        try:
            bar_chart(["a"], [1], "subtask", "examples")
        except MissingExtraError as exc:
            assert "pip install 'gradstore[report]'" in str(exc), exc
        else:
            raise AssertionError("no error without matplotlib")
        assert "matplotlib" not in sys.modules
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
