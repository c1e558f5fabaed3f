"""Routes call functions of gradstore.db (jobs, records, queue): no SQL, no work units.

The build's state machine and its queries live in db/ and worker/; a route that wrote a
query or added a unit itself would split the rules again.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROUTES = Path(__file__).resolve().parents[2] / "service" / "routes"
# what a route must not touch: SQL (sqlalchemy, select(...), session queries) and units
FORBIDDEN_MODULES = ("sqlalchemy",)
FORBIDDEN_CALLS = {"select", "execute", "scalar", "scalars", "text", "update", "delete"}
FORBIDDEN_NAMES = {"WorkUnit", "UnitKind", "new_unit"}


def sql_in(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
            )
            names = [a.name for a in node.names]
            found += [f"import {m}" for m in modules if m.startswith(FORBIDDEN_MODULES)]
            found += [f"import {n}" for n in names if n in FORBIDDEN_NAMES]
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and getattr(func.value, "id", "") == "router":
                continue  # @router.delete(...): a route, not a statement
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in FORBIDDEN_CALLS:
                found.append(f"{name}(...) on line {node.lineno}")
        elif isinstance(node, ast.Name | ast.Attribute):
            name = node.id if isinstance(node, ast.Name) else node.attr
            if name in FORBIDDEN_NAMES:
                found.append(f"{name} on line {node.lineno}")
    return found


def test_the_checker_sees_sql_and_units():
    code = (
        "from sqlalchemy import select\n"
        "from gradstore.db.units import UnitKind\n"
        "def f(session):\n"
        "    session.execute(select(A))\n"
        "    session.add(WorkUnit(kind=UnitKind.VERIFY))\n"
    )
    found = sql_in(code)
    assert "import sqlalchemy" in found and "import UnitKind" in found
    assert any(f.startswith("execute(") for f in found)
    assert any(f.startswith("select(") for f in found)
    assert any(f.startswith("WorkUnit") for f in found)
    assert sql_in("def f(session):\n    return jobs.pending_methods(session, 'x')\n") == []


@pytest.mark.parametrize("path", sorted(ROUTES.glob("*.py")), ids=lambda p: p.name)
def test_route_module_is_free_of_sql(path):
    assert sql_in(path.read_text()) == []
