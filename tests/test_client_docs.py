"""docs/api.md's Python client page lists every public call of the client, with the
signature the code has."""

from __future__ import annotations

import inspect
from pathlib import Path

from gradstore.client import GradstoreClient

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def documented_signature(name: str, function) -> str:
    """``name(a, b=1, *, c=None)``: the signature without annotations or ``self``."""
    empty = inspect.Parameter.empty
    signature = inspect.signature(function)
    parameters = [
        p.replace(annotation=empty) for p in signature.parameters.values() if p.name != "self"
    ]
    return name + str(signature.replace(parameters=parameters, return_annotation=empty))


def test_every_public_call_of_the_client_is_documented_with_its_signature():
    page = DOC.read_text().split("## The Python client", 1)[1]
    calls = [
        ("GradstoreClient" if name == "__init__" else name, function)
        for name, function in inspect.getmembers(GradstoreClient, inspect.isfunction)
        if not name.startswith("_") or name == "__init__"
    ]
    assert len(calls) > 10
    missing = [
        documented_signature(name, function)
        for name, function in calls
        if f"`{documented_signature(name, function)}`" not in page
    ]
    assert not missing, f"document these in docs/api.md, 'The Python client': {missing}"
