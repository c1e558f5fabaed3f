"""The projected-gradient QP solver against support enumeration, and the simplex projection."""

from __future__ import annotations

import numpy as np
import pytest

from gradstore.selection.qp import (
    brute_force_weights,
    objective,
    project_to_simplex,
    solve_weights,
)


def test_simplex_projection_is_the_closest_feasible_point():
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.normal(size=5) * 3
        w = project_to_simplex(x, 2.0)
        assert np.all(w >= 0) and np.isclose(w.sum(), 2.0)
        # optimality: no feasible point on a fine random sample is closer
        samples = rng.dirichlet(np.ones(5), size=4000) * 2.0
        assert np.linalg.norm(w - x) <= np.min(np.linalg.norm(samples - x, axis=1)) + 1e-9


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("eta", "l2"), [(1.0, 0.01), (5.0, 0.0), (0.2, 0.5)])
def test_projected_gradient_matches_brute_force(seed, eta, l2):
    rng = np.random.default_rng(seed)
    alignments = rng.normal(size=(5, 3)) * 0.5
    fast = solve_weights(alignments, eta, l2, iterations=20000, tolerance=1e-13)
    exact = brute_force_weights(alignments, eta, l2)
    assert np.all(fast >= 0) and np.isclose(fast.sum(), 5.0)
    assert objective(fast, alignments, eta, l2) <= objective(exact, alignments, eta, l2) + 1e-8
    if l2 > 0:  # strictly convex: one minimiser
        np.testing.assert_allclose(fast, exact, atol=1e-5)


def test_redundant_examples_share_their_weight():
    """Two identical examples weigh together what one alone would (the Fisher term)."""
    rng = np.random.default_rng(3)
    distinct = rng.normal(size=(3, 4)) * 0.3
    alone = solve_weights(distinct, eta=2.0, l2=0.01)
    twice = solve_weights(np.vstack([distinct, distinct[:1]]), eta=2.0, l2=0.01)
    assert np.isclose(twice[0], twice[3])
    assert twice[0] + twice[3] > twice[0]
    assert twice[0] < alone[0] * 4 / 3  # the copy splits the weight instead of doubling it


def test_first_order_only_puts_every_weight_on_the_best_alignment():
    alignments = np.array([[0.1, 0.2], [0.5, 0.4], [0.3, 0.1]])
    w = solve_weights(alignments, eta=0.0, l2=0.0)
    np.testing.assert_allclose(w, [0, 3, 0], atol=1e-9)
