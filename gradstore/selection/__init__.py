"""Selection methods over a datastore, registered by name (the API's ``method``).

``run_selection`` is the one entry point: options are validated and the store's artifacts
checked before anything is loaded, then the method's scorer fills a score matrix (or gives
a set function, which the ``FacilityLocationPolicy`` selects from) and the policy its
``aggregate`` option names turns it into the ranked selection. Adding a method is one
module (a ``SelectionMethod``) and one line in ``METHODS``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, Union

import numpy as np
from pydantic import BaseModel, Field, create_model

from gradstore.api_models import SelectResponse
from gradstore.errors import ConflictError, InvalidInputError, UnknownMethodError
from gradstore.examples import Example
from gradstore.selection.base import (
    MethodDetails,
    MethodOptions,
    ModelNeed,
    ScoreRequest,
    Selected,
    SelectionMethod,
    SelectionResult,
    budget_to_k,
    runs_a_model,
)
from gradstore.selection.baselines import Bm25Selection, RandomSelection
from gradstore.selection.delift import Delift
from gradstore.selection.diversity import diversify
from gradstore.selection.dsir import Dsir
from gradstore.selection.explain import explain as explain_selection
from gradstore.selection.explain import per_target_view
from gradstore.selection.in2core import In2Core
from gradstore.selection.influence_distillation import InfluenceDistillation
from gradstore.selection.less import Less
from gradstore.selection.policies import PER_TARGET_POLICIES, POLICIES, Pick
from gradstore.selection.rds import Rds
from gradstore.selection.scores import ScoreMatrix
from gradstore.selection.set_function import FacilityLocationPolicy, SetFunction

if TYPE_CHECKING:
    from gradstore.query import QueryEngine
    from gradstore.selection.context import QueryContext

METHODS: dict[str, SelectionMethod[Any, Any]] = {
    m.name: m
    for m in (
        Less(),
        RandomSelection(),
        Bm25Selection(),
        Rds(),
        Dsir(),
        In2Core(),
        InfluenceDistillation(),
        Delift(),
    )
}
# what a store serves when created without a method list: every method whose artifacts cost
# less than the gradient features (today all of them)
DEFAULT_METHODS: tuple[str, ...] = tuple(name for name, m in METHODS.items() if m.default)

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "MethodRequirements",
    "Selected",
    "SelectionResult",
    "extra_artifacts",
    "get_method",
    "method_requirements",
    "run_selection",
    "validate_request",
]


def get_method(name: str) -> SelectionMethod[Any, Any]:
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownMethodError(
            f"unknown selection method {name!r}; known: {', '.join(sorted(METHODS))}"
        ) from None


def validate_request(
    method: str, options: dict[str, Any] | None = None
) -> tuple[SelectionMethod[Any, Any], MethodOptions]:
    """The method and its parsed options, or a 422; call before loading any engine."""
    selector = get_method(method)
    return selector, selector.parse_options(options)


@dataclass(frozen=True)
class MethodRequirements:
    artifacts: tuple[str, ...]  # store artifacts read by the query
    model: ModelNeed  # model run at query time: "none", "base" or "checkpoints"


def method_requirements(method: str, options: dict[str, Any] | None = None) -> MethodRequirements:
    """What a query of ``method`` (with these options) needs from its store."""
    selector, parsed = validate_request(method, options)
    return MethodRequirements(selector.artifacts(parsed), selector.model)


def extra_artifacts(methods: Iterable[str]) -> list[str]:
    """Artifacts beyond the gradient features that stores serving ``methods`` (with default
    options) must hold, in a stable order: what a create or add-methods request computes."""
    from gradstore.artifacts import ARTIFACTS

    names = {a for m in methods for a in method_requirements(m).artifacts}
    return sorted(a for a in names if ARTIFACTS[a].extendable)


def candidate_positions(matrix: ScoreMatrix, picks: list[Pick]) -> np.ndarray:
    """The score-matrix rows of the picked pool rows, in pick order."""
    rows = np.array([p.row for p in picks], dtype=np.int64)
    if matrix.rows is None:
        return rows
    where = {int(r): i for i, r in enumerate(matrix.rows)}
    return np.array([where[int(r)] for r in rows], dtype=np.int64)


def details_json(details: BaseModel | None) -> dict[str, Any]:
    """A method's typed details as the API's JSON (fields it left out stay out)."""
    if details is None:
        return {}
    return details.model_dump(mode="json", exclude_none=True)


@cache
def details_models() -> tuple[type[MethodDetails], ...]:
    """Every shape of ``details`` a registered method answers with (for the API schema)."""
    seen: dict[type[MethodDetails], None] = {}
    for method in METHODS.values():
        for model in method.details_models():
            seen.setdefault(model, None)
    return tuple(seen)


@cache
def select_response_model() -> type[SelectResponse]:
    """The API's select response with ``details`` typed as the registered methods' details
    (the JSON is the same; the OpenAPI schema names every shape)."""
    details: Any = Union[(*details_models(), dict[str, Any])]  # built at run time
    return create_model(
        "SelectResponse",
        __base__=SelectResponse,
        details=(
            details,
            Field(
                default_factory=dict,
                description="What the method reports beside its selection; its shape is the "
                "method's (e.g. LessDetails, In2CoreDetails, DeliftDetails).",
            ),
        ),
    )


def score(
    selector: SelectionMethod[Any, Any], ctx: QueryContext, request: ScoreRequest
) -> ScoreMatrix:
    """The method's score matrix; a set function's is the greedy picks' gains."""
    scored = selector.score(ctx, request)
    if isinstance(scored, SetFunction):
        return FacilityLocationPolicy().select(
            scored, request.k, request.per_target, request.timings
        )
    return scored


def run_selection(
    engine: QueryEngine,
    targets: list[Example],
    method: str = "less",
    top_k: int | None = None,
    fraction: float | None = None,
    options: dict[str, Any] | None = None,
    explain: bool = False,
) -> SelectionResult:
    """Validate the request, run the method and time it; results are ranked best first.

    ``explain``: also say which target point pulled each example in and how each target is
    covered (``SelectionResult.explanation``, see ``selection.explain``).
    """
    started = time.perf_counter()
    selector, parsed = validate_request(method, options)
    if not targets:
        raise InvalidInputError("at least one target example is needed")
    k = budget_to_k(engine.manifest.num_examples, top_k, fraction)
    if engine.manifest.model is None and runs_a_model(selector.model, selector.artifacts(parsed)):
        raise ConflictError(
            f"this datastore was built without a model (for methods that read the text "
            f"alone); method {method!r} needs one, and a model cannot be added to a built "
            "store: build a new datastore with a model"
        )
    engine.require_artifacts(selector.artifacts(parsed), method)
    request = ScoreRequest(targets, parsed, k, parsed.aggregate in PER_TARGET_POLICIES)
    matrix = score(selector, engine, request)
    ranking = time.perf_counter()
    if parsed.diversity == "facility_location":
        picks = diversify(
            engine.pool, matrix, parsed.aggregate, k,
            parsed.diversity_weight, parsed.diversity_candidates, parsed.diversity_threshold,
        )  # fmt: skip
    else:
        picks = POLICIES[parsed.aggregate](matrix, k)
    ids = engine.datastore.ids
    weights = selector.weights(matrix, candidate_positions(matrix, picks), parsed)
    selected = [
        Selected(
            ids[p.row],
            p.score,
            matrix.subtasks[p.subtask],
            None if weights is None else float(weights[i]),
        )
        for i, p in enumerate(picks)
    ]
    timings = dict(request.timings)
    timings["rank"] = (time.perf_counter() - ranking) * 1000
    explanation = None
    if explain:
        explaining = time.perf_counter()
        explanation = _explain(selector, engine, request, matrix, picks)
        timings["explain"] = (time.perf_counter() - explaining) * 1000
    timings["total"] = (time.perf_counter() - started) * 1000
    return SelectionResult(
        method=selector.name,
        selected=selected,
        num_candidates=engine.manifest.num_examples,
        timings_ms={name: round(ms, 3) for name, ms in timings.items()},
        details=details_json(matrix.details),
        explanation=explanation,
    )


def _explain(selector, engine: QueryEngine, request: ScoreRequest, matrix, picks) -> dict[str, Any]:
    """From the ranked matrix when it has target columns, else from a per-target rescoring
    (for the explanation only: the ranking is the one already made)."""
    if matrix.column_targets is not None:
        return explain_selection(matrix, picks, engine.datastore.ids, from_policy=True)
    again = ScoreRequest(request.targets, request.options, request.k, per_target=True)
    per_target = per_target_view(score(selector, engine, again), request.targets)
    return explain_selection(per_target, picks, engine.datastore.ids, from_policy=False)
