"""What every selection method declares, takes and returns, and how a budget becomes a k.

A method is a *scorer* — targets and pool, seen through a ``QueryContext``, to a
``ScoreMatrix`` — and a *policy* (see ``policies``) chosen by its ``aggregate`` option; or,
for a set function (DELIFT), a ``SetFunction`` (kernel + relevance) that the
``FacilityLocationPolicy`` selects from. It declares what it needs before anything is
loaded: the store artifacts (by name, see ``gradstore.artifacts``) and which model, if any,
it runs at query time. ``SelectionMethod[OptionsT, DetailsT]``: its options and the details
of its answer are pydantic models (validated first; the details are in the API's schema).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gradstore.errors import InvalidInputError
from gradstore.examples import Example
from gradstore.selection.policies import PolicyName
from gradstore.selection.scores import ScoreMatrix

if TYPE_CHECKING:
    from gradstore.selection.context import QueryContext
    from gradstore.selection.set_function import SetFunction

DEFAULT_SUBTASK = "default"
# the model a method runs at query time: none, the base model, or base + warmup checkpoints
ModelNeed = Literal["none", "base", "checkpoints"]


class MethodOptions(BaseModel):
    """Base of each method's options; unknown options are an error, not ignored."""

    model_config = ConfigDict(extra="forbid")
    aggregate: PolicyName = Field(
        "max",
        description="Selection policy: 'max' (a candidate's best subtask), 'mean' (over "
        "subtasks), or 'round_robin' (subtasks, and the target points within each, take turns "
        "picking their best remaining candidate).",
    )
    diversity: Literal["none", "facility_location"] = Field(
        "none",
        description="'facility_location': pick among the best diversity_candidates × k by the "
        "method's score plus facility location over their gradient-feature kernel, so "
        "near-duplicates are not all taken.",
    )
    diversity_weight: float = Field(
        0.2, ge=0, le=1, description="Trade-off λ: 0 the method's ranking, 1 pure coverage."
    )
    diversity_candidates: float = Field(
        4.0, ge=1, le=100, description="Candidates for the diversity policy, as a multiple of k."
    )
    diversity_threshold: float = Field(
        0.8,
        ge=0,
        le=1,
        description="Cosine of gradient features above which two candidates count as "
        "redundant (rescaled to [0, 1] above it): 0.8 (default) counts near-copies only; 0 "
        "makes it plain cosine facility location, which also spreads picks across the skill.",
    )


class MethodDetails(BaseModel):
    """Base of each method's ``details``: what it reports beside the selection."""

    model_config = ConfigDict(extra="forbid")


class SkippedTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    reason: str = Field(description="Why the target gave no features (e.g. no completion token).")


class TargetDetails(MethodDetails):
    """Details of a method that runs the model on the targets."""

    skipped_targets: list[SkippedTarget] = Field(
        description="Targets left out (no completion token within max_seq_len, ...)."
    )


def skipped(skips) -> list[SkippedTarget]:
    return [SkippedTarget(id=s.id, reason=s.reason) for s in skips]


OptionsT = TypeVar("OptionsT", bound=MethodOptions)
DetailsT = TypeVar("DetailsT", bound=MethodDetails)


@dataclass(frozen=True)
class Selected:
    id: str
    score: float
    subtask: str
    weight: float | None = None  # per-example training weight, for methods that give one


@dataclass
class SelectionResult:
    method: str
    selected: list[Selected]
    num_candidates: int
    timings_ms: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    # with ``explain``: {"examples": [...], "targets": [...]} (see ``selection.explain``)
    explanation: dict[str, Any] | None = None


@dataclass
class ScoreRequest(Generic[OptionsT]):
    """What a scorer is given. ``per_target``: the policy wants one column per target point
    (a scorer that cannot may still give one per subtask)."""

    targets: list[Example]
    options: OptionsT
    k: int
    per_target: bool
    timings: dict[str, float] = field(default_factory=dict)


class SelectionMethod(Generic[OptionsT, DetailsT]):
    """A named selector: subclasses set the class attributes and ``score``."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    Options: type[OptionsT]
    Details: type[DetailsT]
    model: ClassVar[ModelNeed] = "none"
    default: ClassVar[bool] = True  # served by a store created without a method list

    def parse_options(self, options: dict[str, Any] | None) -> OptionsT:
        try:
            return self.Options.model_validate(options or {})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise InvalidInputError(f"options for method {self.name!r}: {problems}") from None

    def artifacts(self, options: OptionsT) -> tuple[str, ...]:
        """Store artifacts this query reads (names in ``gradstore.artifacts.ARTIFACTS``)."""
        return ()

    def score(
        self, ctx: QueryContext, request: ScoreRequest[OptionsT]
    ) -> ScoreMatrix[DetailsT] | SetFunction[DetailsT]:
        """Scores of the pool (or of candidates that surely hold the best ``request.k``), or
        the set function whose greedy maximiser is the selection."""
        raise NotImplementedError

    def weights(
        self, matrix: ScoreMatrix[DetailsT], positions: np.ndarray, options: OptionsT
    ) -> np.ndarray | None:
        """Training weights of the selected candidates (``positions`` index the matrix's
        rows, in selection order), or None for methods that only rank."""
        return None

    @classmethod
    def details_models(cls) -> tuple[type[MethodDetails], ...]:
        """The shapes of this method's details, for the API schema (its ``Details`` and the
        subclasses it answers with)."""
        return (*cls.Details.__subclasses__(), cls.Details)


def runs_a_model(model: ModelNeed, artifacts: Iterable[str]) -> bool:
    """Does a method with these needs run the model (or its tokenizer), at query time or
    to make one of its artifacts?"""
    from gradstore.artifacts import ARTIFACTS

    return model != "none" or any(
        ARTIFACTS[name].needs_model or not ARTIFACTS[name].extendable for name in artifacts
    )


def runs_the_warmup(model: ModelNeed, artifacts: Iterable[str]) -> bool:
    """Does a method with these needs run the warmup checkpoints (at query time, or to make
    an artifact) or read gradient features?"""
    from gradstore.artifacts import ARTIFACTS

    return model == "checkpoints" or any(
        not ARTIFACTS[name].extendable
        or ARTIFACTS[name].needs_checkpoints
        or ARTIFACTS[name].needs_features
        for name in artifacts
    )


def budget_to_k(num_examples: int, top_k: int | None, fraction: float | None) -> int:
    """Exactly one of ``top_k`` and ``fraction``; a fraction rounds up, at least one example."""
    if (top_k is None) == (fraction is None):
        raise InvalidInputError("give exactly one of 'top_k' and 'fraction'")
    if top_k is not None:
        if top_k < 1:
            raise InvalidInputError("'top_k' must be at least 1")
        return min(top_k, num_examples)
    assert fraction is not None
    if not 0 < fraction <= 1:
        raise InvalidInputError("'fraction' must be in (0, 1]")
    return max(1, min(num_examples, math.ceil(fraction * num_examples - 1e-9)))


def group_by_subtask(targets: list[Example]) -> OrderedDict[str, list[int]]:
    """Target positions per subtask, subtasks in order of first appearance."""
    groups: OrderedDict[str, list[int]] = OrderedDict()
    for position, target in enumerate(targets):
        groups.setdefault(target.subtask or DEFAULT_SUBTASK, []).append(position)
    return groups


def target_columns(targets: list[Example]) -> tuple[list[str], list[int]]:
    """(subtasks in order of first appearance, subtask index of each target)."""
    groups = group_by_subtask(targets)
    names = list(groups)
    index = {name: i for i, name in enumerate(names)}
    return names, [index[t.subtask or DEFAULT_SUBTASK] for t in targets]


def per_target_matrix(
    scores: np.ndarray, targets: list[Example], rows: np.ndarray | None = None, **extra: Any
) -> ScoreMatrix[Any]:
    """Scores whose columns are these target points, each under its subtask."""
    subtasks, column_subtask = target_columns(targets)
    return ScoreMatrix(
        scores, subtasks, np.asarray(column_subtask), rows, [t.id for t in targets], **extra
    )
