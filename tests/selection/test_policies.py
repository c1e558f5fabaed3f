"""The shared selection policies against slow, obviously-correct references."""

from __future__ import annotations

import numpy as np
import pytest

from gradstore.selection.policies import POLICIES, max_policy, mean_policy, round_robin_policy
from gradstore.selection.scores import ScoreMatrix


def reference_aggregate(scores, column_subtask, rows, k, how):
    """Sort (−score, row) tuples in Python; a subtask's score is the mean of its columns."""
    subtasks = sorted(set(column_subtask))
    table = []
    for i, row in enumerate(rows):
        per_subtask = [
            sum(scores[i][c] for c in range(len(column_subtask)) if column_subtask[c] == s)
            / column_subtask.count(s)
            for s in subtasks
        ]
        value = max(per_subtask) if how == "max" else sum(per_subtask) / len(per_subtask)
        table.append((-value, row, per_subtask.index(max(per_subtask))))
    return [(row, -negative, subtask) for negative, row, subtask in sorted(table)[:k]]


def reference_round_robin(scores, column_subtask, rows, k):
    """Literal reading: subtasks take turns, each cycling its columns; best unselected."""
    k = min(k, len(rows))
    subtasks = sorted(set(column_subtask))
    columns = {
        s: [c for c in range(len(column_subtask)) if column_subtask[c] == s] for s in subtasks
    }
    turn = dict.fromkeys(subtasks, 0)
    chosen, out = set(), []
    while len(out) < k:
        for s in subtasks:
            if len(out) == k:
                break
            c = columns[s][turn[s] % len(columns[s])]
            turn[s] += 1
            ranking = sorted(range(len(rows)), key=lambda i: (-scores[i][c], rows[i]))
            best = next(i for i in ranking if rows[i] not in chosen)
            chosen.add(rows[best])
            out.append((rows[best], scores[best][c], s))
    return out


def matrix(seed, candidates=40, columns=4, subtasks=2, per_target=True, subset=False, ties=True):
    rng = np.random.default_rng(seed)
    # small integers: many ties, and means over 1, 2 or 4 columns are exact in binary
    scores = rng.integers(0, 6, size=(candidates, columns)).astype(np.float32)
    if not ties:
        scores = rng.standard_normal((candidates, columns)).astype(np.float32)
    rows = np.sort(rng.choice(1000, size=candidates, replace=False)) if subset else None
    if subset:
        rows = rng.permutation(rows)  # candidates need not come in row order
    names = [f"s{i}" for i in range(subtasks)]
    if not per_target:
        return ScoreMatrix.per_subtask(scores[:, :subtasks], names, rows)
    column_subtask = np.array([i % subtasks for i in range(columns)])
    assert all(np.sum(column_subtask == j) in (1, 2, 4) for j in range(subtasks))
    return ScoreMatrix(scores, names, column_subtask, rows, [f"t{i}" for i in range(columns)])


CASES = [
    dict(per_target=True),
    dict(per_target=False),
    dict(per_target=True, subset=True),
    dict(per_target=False, subset=True, ties=False),
    dict(per_target=True, columns=1, subtasks=1),
    dict(per_target=True, columns=8, subtasks=2, candidates=9),
    dict(per_target=True, columns=6, subtasks=3, candidates=9),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("k", [1, 5, 9, 40, 100])
def test_policies_equal_their_references(case, k):
    for seed in range(4):
        m = matrix(seed, **case)
        rows = m.pool_rows().tolist()
        scores = m.scores.astype(np.float64).tolist()
        subtask_of = m.column_subtask.tolist()
        for how, policy in (("max", max_policy), ("mean", mean_policy)):
            got = [(p.row, p.score, p.subtask) for p in policy(m, k)]
            want = reference_aggregate(scores, subtask_of, rows, k, how)
            assert [g[0] for g in got] == [w[0] for w in want]
            np.testing.assert_allclose([g[1] for g in got], [w[1] for w in want], rtol=1e-6)
            assert [g[2] for g in got] == [w[2] for w in want]
        got = [(p.row, p.score, p.subtask) for p in round_robin_policy(m, k)]
        want = reference_round_robin(scores, subtask_of, rows, k)
        assert [(g[0], g[2]) for g in got] == [(w[0], w[2]) for w in want]
        np.testing.assert_allclose([g[1] for g in got], [w[1] for w in want], rtol=1e-6)


def test_ties_go_to_the_smaller_row_and_round_robin_alternates():
    scores = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.5, 0.5]])
    m = ScoreMatrix.per_subtask(scores, ["a", "b"])
    assert [p.row for p in max_policy(m, 5)] == [0, 1, 2, 3, 4]
    assert [p.row for p in round_robin_policy(m, 5)] == [0, 2, 1, 3, 4]
    assert [m.subtasks[p.subtask] for p in round_robin_policy(m, 4)] == ["a", "b", "a", "b"]
    assert [p.row for p in mean_policy(m, 2)] == [0, 1]  # all 0.5: row order


def test_every_policy_returns_distinct_rows_and_k_equals_n():
    m = matrix(3, candidates=12, columns=4, subtasks=2)
    for policy in POLICIES.values():
        picks = policy(m, 12)
        assert sorted(p.row for p in picks) == list(range(12))
        assert len(policy(m, 50)) == 12


def test_a_matrix_refuses_inconsistent_shapes():
    with pytest.raises(ValueError):
        ScoreMatrix(np.zeros((3, 2)), ["a"], np.array([0]))
    with pytest.raises(ValueError):
        ScoreMatrix.per_subtask(np.zeros((3, 2)), ["a", "b"], rows=np.arange(2))
