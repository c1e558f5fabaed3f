"""Why each example was selected, and how well each target point is covered.

Works for every method from its score matrix with one column per target point (a method
scored per subtask is scored again per target point for the explanation only, so the
ranking never changes): a selected example was pulled in by the target column that picked
it (round-robin) or by its best-scoring target within its subtask; its *share* is that
column's score over the sum of its positive target scores (1.0: one target alone wanted it).
A target point's coverage is how many selected examples it pulled in, and its strongest
selected examples by its own score (In2Core's coverage signal, for any method).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gradstore.selection.base import DEFAULT_SUBTASK
from gradstore.selection.policies import Pick
from gradstore.selection.scores import ScoreMatrix

STRONGEST = 3  # selected examples listed per target point


def per_target_view(matrix: ScoreMatrix, targets: list) -> ScoreMatrix:
    """A subtask-column matrix as target columns, each target holding its subtask's score:
    for a method that cannot score target points (random), every target wants it equally."""
    if matrix.column_targets is not None:
        return matrix
    index = {name: s for s, name in enumerate(matrix.subtasks)}
    targets = [t for t in targets if (t.subtask or DEFAULT_SUBTASK) in index]
    column_subtask = np.array([index[t.subtask or DEFAULT_SUBTASK] for t in targets])
    return ScoreMatrix(
        matrix.scores[:, column_subtask], matrix.subtasks, column_subtask, matrix.rows,
        [t.id for t in targets], matrix.details,
    )  # fmt: skip


def explain(
    matrix: ScoreMatrix, picks: list[Pick], ids: list[str], from_policy: bool
) -> dict[str, Any]:
    """The ``explanation`` of a result: ``examples`` (one per selected example, in rank
    order) and ``targets`` (one per target point). ``from_policy``: ``matrix`` is the one
    the policy ranked, so a round-robin pick's column is the target that took it."""
    if matrix.column_targets is None:
        raise ValueError("an explanation needs one column per target point")
    position = {int(row): p for p, row in enumerate(matrix.pool_rows())}
    column_subtask = matrix.column_subtask
    examples = []
    pulled = np.zeros(len(matrix.column_targets), dtype=np.int64)
    chosen_positions = []
    for pick in picks:
        at = position.get(pick.row)
        entry: dict[str, Any] = {
            "id": ids[pick.row],
            "subtask": matrix.subtasks[pick.subtask],
            "target": None,
            "share": None,
        }
        if at is not None:
            chosen_positions.append(at)
            scores = matrix.scores[at].astype(np.float64)
            if from_policy and pick.column is not None:
                column = pick.column
            else:
                own = np.flatnonzero(column_subtask == pick.subtask)
                column = int(own[np.argmax(scores[own])])
            positive = scores[scores > 0].sum()
            entry["target"] = matrix.column_targets[column]
            entry["target_score"] = float(scores[column])
            entry["share"] = float(scores[column] / positive) if scores[column] > 0 else 0.0
            pulled[column] += 1
        examples.append(entry)
    chosen = np.asarray(chosen_positions, dtype=np.int64)
    targets = []
    for c, target in enumerate(matrix.column_targets):
        values = matrix.scores[chosen, c].astype(np.float64) if chosen.size else np.zeros(0)
        best = np.argsort(-values, kind="stable")[:STRONGEST]
        targets.append(
            {
                "id": target,
                "subtask": matrix.subtasks[int(column_subtask[c])],
                "pulled": int(pulled[c]),
                "strongest": [
                    {
                        "id": ids[int(matrix.pool_rows()[chosen[b]])],
                        "score": float(values[b]),
                    }
                    for b in best
                ],
            }
        )
    return {"examples": examples, "targets": targets}
