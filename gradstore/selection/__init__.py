"""Selection methods over a datastore, registered by name (the API's ``method``)."""

from __future__ import annotations

import time
from typing import Any

from gradstore.errors import InvalidInputError, UnknownMethodError
from gradstore.examples import Example
from gradstore.selection.base import (
    Selected,
    SelectionMethod,
    SelectionResult,
    budget_to_k,
)
from gradstore.selection.baselines import Bm25Selection, RandomSelection
from gradstore.selection.less import Less

METHODS: dict[str, SelectionMethod] = {
    m.name: m for m in (Less(), RandomSelection(), Bm25Selection())
}

__all__ = ["METHODS", "Selected", "SelectionResult", "get_method", "run_selection"]


def get_method(name: str) -> SelectionMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownMethodError(
            f"unknown selection method {name!r}; known: {', '.join(sorted(METHODS))}"
        ) from None


def run_selection(
    engine,
    targets: list[Example],
    method: str = "less",
    top_k: int | None = None,
    fraction: float | None = None,
    options: dict[str, Any] | None = None,
) -> SelectionResult:
    """Validate the request, run the method and time it; results are ranked best first."""
    started = time.perf_counter()
    selector = get_method(method)
    parsed = selector.parse_options(options)
    if not targets:
        raise InvalidInputError("at least one target example is needed")
    k = budget_to_k(engine.manifest.num_examples, top_k, fraction)
    timings: dict[str, float] = {}
    result = selector.select(engine, targets, k, parsed, timings)
    timings["total"] = (time.perf_counter() - started) * 1000
    result.timings_ms = {name: round(ms, 3) for name, ms in timings.items()}
    return result
