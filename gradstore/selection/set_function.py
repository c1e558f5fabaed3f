"""Set-function selection as a policy: a kernel, a relevance and an objective, maximised greedily.

A method such as DELIFT does not score candidates one by one: its selection is the greedy
maximiser of a submodular function over the pool (facility location over a similarity
kernel, capped by target relevance or floored by an existing set, see ``submodular``). The
method gives a ``SetFunction``; the ``FacilityLocationPolicy`` runs the lazy greedy for the
budget, then hands its picks to the request's ordinary policy (``aggregate``, or diversity)
to be ranked and reported: a pick's score is its marginal gain (non-increasing), under the column —
subtask or target point — whose target relevance is highest for it (every column when the
function has no relevance).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from gradstore.examples import Example
from gradstore.selection.scores import ScoreMatrix
from gradstore.selection.submodular import Objective, SparseKernel, lazy_greedy

D = TypeVar("D")


@dataclass
class SetFunction(Generic[D]):
    """What a set-function method gives instead of a score matrix."""

    kernel: SparseKernel  # (n, n) similarity of pool examples
    objective: Objective  # the cap / floor that makes it task-specific or conditional
    targets: list[Example]  # the targets the relevance columns belong to
    report: Callable[[np.ndarray], D]  # the method's details, given the picks' gains
    relevance: np.ndarray | None = None  # (n, targets): which target a pick serves
    allowed: np.ndarray | None = None  # (n,) bool: the rows that may be picked


class FacilityLocationPolicy:
    """Greedy maximisation of a ``SetFunction`` for a budget."""

    def greedy(
        self, function: SetFunction, k: int, timings: dict[str, float] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(picked rows in greedy order, their marginal gains)."""
        started = time.perf_counter()
        picked, gains = lazy_greedy(function.kernel, k, function.objective, function.allowed)
        if timings is not None:
            timings["greedy"] = (time.perf_counter() - started) * 1000
        return picked, gains

    @staticmethod
    def gains_matrix(
        function: SetFunction, picked: np.ndarray, gains: np.ndarray, per_target: bool
    ) -> ScoreMatrix:
        """Picks × columns: a pick's gain under the column whose targets it helps most (all
        columns when there is no relevance), 0 elsewhere."""
        from gradstore.selection.base import per_target_matrix, target_columns

        targets = function.targets
        subtasks, column_subtask = target_columns(targets)
        columns = len(targets) if per_target else len(subtasks)
        scores = np.zeros((len(picked), columns))
        if function.relevance is None:
            scores[:] = gains[:, None]
        else:
            per_column = function.relevance[picked]
            if not per_target:
                per_column = np.stack(
                    [per_column[:, np.asarray(column_subtask) == s].max(axis=1)
                     for s in range(len(subtasks))], axis=1,
                )  # fmt: skip
            scores[np.arange(len(picked)), per_column.argmax(axis=1)] = gains
        if per_target:
            return per_target_matrix(scores, targets, rows=picked)
        return ScoreMatrix.per_subtask(scores, subtasks, rows=picked)

    def select(
        self,
        function: SetFunction[D],
        k: int,
        per_target: bool,
        timings: dict[str, float] | None = None,
    ) -> ScoreMatrix:
        """The greedy picks as a matrix of their gains, carrying the method's details; the
        request's ``aggregate`` policy (or diversity) then ranks them like any scores."""
        picked, gains = self.greedy(function, k, timings)
        matrix = self.gains_matrix(function, picked, gains, per_target)
        matrix.details = function.report(gains)
        return matrix
