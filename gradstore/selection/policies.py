"""Selection policies: how a score matrix becomes a ranked budget. Shared by every method.

- ``max``: a candidate's score is its best subtask's (LESS's aggregation).
- ``mean``: the mean over subtasks.
- ``round_robin``: subtasks take turns; within a subtask its target points take turns; each
  turn takes that column's best candidate not yet selected (RDS+'s selection; found best at
  small budgets by later work). Ranked in the order picked, so scores need not decrease.
Ties always go to the smaller pool row, so a ranking is a pure function of the scores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from gradstore.selection.scores import ScoreMatrix
from gradstore.store.search import top_k

PolicyName = Literal["max", "mean", "round_robin"]


@dataclass(frozen=True)
class Pick:
    row: int  # pool row
    score: float
    subtask: int  # index into ScoreMatrix.subtasks
    column: int | None  # the column that picked it (round-robin), else None


def ranked(scores: np.ndarray, rows: np.ndarray | None, k: int) -> np.ndarray:
    """Positions of the ``k`` best scores, ties by the smaller pool row."""
    if rows is None:
        return top_k(scores, k)
    order = np.lexsort((rows, -scores.astype(np.float64)))
    return order[:k]


def _aggregate(matrix: ScoreMatrix, k: int, how: str) -> list[Pick]:
    per_subtask = matrix.subtask_scores()
    scores = per_subtask.max(axis=1) if how == "max" else per_subtask.mean(axis=1)
    rows = matrix.pool_rows()
    best = ranked(scores, matrix.rows, k)
    return [
        Pick(int(rows[i]), float(scores[i]), int(np.argmax(per_subtask[i])), None) for i in best
    ]


def max_policy(matrix: ScoreMatrix, k: int) -> list[Pick]:
    return _aggregate(matrix, k, "max")


def mean_policy(matrix: ScoreMatrix, k: int) -> list[Pick]:
    return _aggregate(matrix, k, "mean")


def round_robin_policy(matrix: ScoreMatrix, k: int) -> list[Pick]:
    """Subtasks in turn, each subtask's columns in turn, each taking its best unselected.

    A column never looks past its own top k: fewer than k candidates are selected whenever it
    picks, so one of its top k is always free.
    """
    k = min(k, matrix.num_candidates)
    rows = matrix.pool_rows()
    rankings = [ranked(matrix.scores[:, c], matrix.rows, k) for c in range(matrix.scores.shape[1])]
    columns = [np.flatnonzero(matrix.column_subtask == s) for s in range(len(matrix.subtasks))]
    columns = [c for c in columns if len(c)]
    pointer = [0] * len(rankings)
    turn = [0] * len(columns)
    taken: set[int] = set()
    picks: list[Pick] = []
    while len(picks) < k:
        for s, subtask_columns in enumerate(columns):
            if len(picks) == k:
                break
            c = int(subtask_columns[turn[s] % len(subtask_columns)])
            turn[s] += 1
            ranking = rankings[c]
            while int(ranking[pointer[c]]) in taken:
                pointer[c] += 1
            position = int(ranking[pointer[c]])
            taken.add(position)
            subtask = int(matrix.column_subtask[c])
            picks.append(Pick(int(rows[position]), float(matrix.scores[position, c]), subtask, c))
    return picks


POLICIES: dict[str, Callable[[ScoreMatrix, int], list[Pick]]] = {
    "max": max_policy,
    "mean": mean_policy,
    "round_robin": round_robin_policy,
}
# policies that work on target points, so scorers that can should give one column per target
PER_TARGET_POLICIES = frozenset({"round_robin"})
