"""DataInf's closed form against explicit damped inverses, and the streamed scores against
the per-target, per-layer reference."""

from __future__ import annotations

import numpy as np
import pytest

from gradstore.selection.datainf import (
    closed_form_ihvp,
    datainf_scores,
    layer_damping,
    reference_ihvp,
    reference_scores,
)


@pytest.mark.parametrize("damping", [1e-3, 0.1, 2.0])
def test_closed_form_is_the_mean_of_explicit_damped_inverses(damping):
    rng = np.random.default_rng(0)
    gradients = rng.normal(size=(7, 5))
    v = rng.normal(size=5)
    np.testing.assert_allclose(
        closed_form_ihvp(gradients, v, damping), reference_ihvp(gradients, v, damping), rtol=1e-9
    )


def test_closed_form_approximates_the_inverse_of_the_mean_for_large_damping():
    """DataInf's swap of mean and inverse is exact at λ → ∞ up to O(1/λ²); small p, dense."""
    rng = np.random.default_rng(1)
    gradients = rng.normal(size=(20, 4))
    v = rng.normal(size=4)
    damping = 50.0
    exact = np.linalg.solve(gradients.T @ gradients / 20 + damping * np.eye(4), v)
    approx = closed_form_ihvp(gradients, v, damping)
    assert np.linalg.norm(approx - exact) / np.linalg.norm(exact) < 1e-2


def pool_blocks(directions, norms, size):
    def blocks():
        for start in range(0, len(norms), size):
            yield start, directions[start : start + size], norms[start : start + size]

    return blocks


def test_streamed_scores_equal_the_reference_over_every_layer_and_target():
    rng = np.random.default_rng(2)
    sizes = [6, 9, 4]
    pool = [rng.normal(size=(23, p)) * s for p, s in zip(sizes, (1.0, 0.1, 3.0), strict=True)]
    targets = [rng.normal(size=(3, p)) for p in sizes]
    expected = reference_scores(pool, targets, sizes)

    # unprojected features, padded to one width: directions and norms as the artifact stores
    width = max(sizes)

    def split(rows):
        directions = np.zeros((len(rows[0]), len(rows), width))
        norms = np.zeros((len(rows[0]), len(rows)))
        for layer, g in enumerate(rows):
            norms[:, layer] = np.linalg.norm(g, axis=1)
            directions[:, layer, : g.shape[1]] = g / norms[:, layer, None]
        return directions.astype(np.float32), norms.astype(np.float32)

    pool_dirs, pool_norms = split(pool)
    target_dirs, target_norms = split(targets)
    got = datainf_scores(
        pool_blocks(pool_dirs, pool_norms, 5), pool_norms, target_dirs, target_norms,
        np.array(sizes),
    )  # fmt: skip
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4 * np.abs(expected).max())
    assert np.allclose(
        layer_damping(pool_norms, sizes),
        [0.1 * np.mean((g**2).sum(1)) / p for g, p in zip(pool, sizes, strict=True)],
        rtol=1e-5,
    )
