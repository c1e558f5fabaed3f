"""What every selection method takes and returns, and how a budget becomes a k."""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from gradstore.errors import InvalidInputError
from gradstore.examples import Example

if TYPE_CHECKING:
    from gradstore.query import QueryEngine

DEFAULT_SUBTASK = "default"


class MethodOptions(BaseModel):
    """Base of each method's options; unknown options are an error, not ignored."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Selected:
    id: str
    score: float
    subtask: str


@dataclass
class SelectionResult:
    method: str
    selected: list[Selected]
    num_candidates: int
    timings_ms: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


class SelectionMethod:
    """A named selector over a datastore; subclasses set ``name``/``Options`` and ``select``."""

    name: ClassVar[str]
    Options: ClassVar[type[MethodOptions]] = MethodOptions

    def parse_options(self, options: dict[str, Any] | None) -> MethodOptions:
        try:
            return self.Options.model_validate(options or {})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise InvalidInputError(f"options for method {self.name!r}: {problems}") from None

    def select(
        self,
        engine: QueryEngine,
        targets: list[Example],
        k: int,
        options: Any,  # the method's own Options (a subclass narrows it)
        timings: dict[str, float],
    ) -> SelectionResult:
        raise NotImplementedError


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
