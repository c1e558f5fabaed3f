"""Lazy greedy over the sparse kernel against plain greedy, exhaustive search and apricot."""

from __future__ import annotations

import importlib.util
import itertools
import json
import subprocess
import sys

import numpy as np
import pytest

from gradstore.selection.submodular import (
    Objective,
    SparseKernel,
    lazy_greedy,
    objective_value,
    reference_greedy,
)


def sparse_dense(seed: int, n: int = 12, width: int = 4) -> tuple[SparseKernel, np.ndarray]:
    rng = np.random.default_rng(seed)
    neighbours = np.stack([rng.choice(np.delete(np.arange(n), i), width, False) for i in range(n)])
    values = rng.random((n, width))
    kernel = SparseKernel.from_neighbours(neighbours, values, n, self_value=1.0)
    dense = np.eye(n)
    for i in range(n):
        dense[i, neighbours[i]] = values[i]
    return kernel, dense


def objectives(seed: int, n: int) -> dict[str, Objective]:
    rng = np.random.default_rng(seed + 100)
    return {
        "facility_location": Objective(),
        "mutual_information": Objective(cap=rng.random(n)),
        "conditional_gain": Objective(floor=rng.random(n) * 0.8),
        "diversity": Objective(weight=0.3, modular=rng.random(n)),
        "weighted_points": Objective(
            weight=0.3, modular=rng.random(n), point_weight=rng.random(n) + 0.1
        ),
    }


OBJECTIVES = [
    "facility_location",
    "mutual_information",
    "conditional_gain",
    "diversity",
    "weighted_points",
]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("name", OBJECTIVES)
def test_lazy_greedy_equals_plain_greedy(seed, name):
    kernel, dense = sparse_dense(seed)
    np.testing.assert_array_equal(kernel.to_dense(), dense)
    objective = objectives(seed, 12)[name]
    allowed = np.ones(12, bool)
    allowed[[2, 5]] = name != "conditional_gain"
    picked, gains = lazy_greedy(kernel, 8, objective, allowed)
    expected, expected_gains = reference_greedy(dense, 8, objective, allowed)
    assert picked.tolist() == expected
    np.testing.assert_allclose(gains, expected_gains, atol=1e-12)
    assert np.all(np.diff(gains) <= 1e-12)  # submodular: gains never increase
    assert objective_value(dense, picked, objective) == pytest.approx(float(gains.sum()))


@pytest.mark.parametrize("seed", range(3))
def test_greedy_within_one_minus_one_over_e_of_the_optimum(seed):
    kernel, dense = sparse_dense(seed, n=10, width=3)
    for objective in objectives(seed, 10).values():
        picked, _ = lazy_greedy(kernel, 3, objective)
        subsets = itertools.combinations(range(10), 3)
        best = max(objective_value(dense, c, objective) for c in subsets)
        assert objective_value(dense, picked, objective) >= (1 - 1 / np.e) * best - 1e-12


def test_ties_go_to_the_smaller_row_and_zero_gains_still_fill_the_budget():
    dense = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    picked, gains = lazy_greedy(SparseKernel.from_dense(dense), 3)
    assert picked.tolist() == [0, 1, 2] and gains.tolist() == [2.0, 0.0, 0.0]


APRICOT = """
import json, sys
import numpy as np
import apricot
similarity = np.load(sys.argv[1])
selector = apricot.FacilityLocationSelection(
    int(sys.argv[2]), metric="precomputed", optimizer="naive", verbose=False
).fit(similarity)
print(json.dumps({"ranking": [int(i) for i in selector.ranking], "gains": selector.gains.tolist()}))
"""


def test_facility_location_agrees_with_apricot(tmp_path):
    """apricot-select as an oracle only (test-time, never a gradstore dependency). It runs in
    a child process: importing it (numba, scikit-learn) changes this process's floating-point
    state enough to move other tests' bytes."""
    if importlib.util.find_spec("apricot") is None:
        pytest.skip(
            "apricot-select is not installed (a test oracle only: pip install apricot-select)"
        )
    rng = np.random.default_rng(0)
    x = rng.random((40, 40))
    similarity = x @ x.T  # symmetric, so apricot's orientation does not matter
    np.save(tmp_path / "similarity.npy", similarity)
    done = subprocess.run(
        [sys.executable, "-c", APRICOT, str(tmp_path / "similarity.npy"), "10"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"apricot-select does not import here: {done.stderr.strip().splitlines()[-1]}")
    oracle = json.loads(done.stdout)
    picked, gains = lazy_greedy(SparseKernel.from_dense(similarity), 10)
    assert picked.tolist() == oracle["ranking"]
    np.testing.assert_allclose(gains, oracle["gains"], rtol=1e-6, atol=1e-9)
