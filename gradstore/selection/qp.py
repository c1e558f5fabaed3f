"""Influence Distillation's weights: a small non-negative QP solved by projected gradient.

For the k selected examples S with first-order alignments P (k, |T|) — row i the cosines of
i's update direction with each target gradient — the second-order model of the target loss
after one step on the weighted set is

    f(w) = −p̄ᵀw + (η/2)·wᵀQw + λ‖w‖²,   w ≥ 0,  Σ w = k,

with p̄ = P·1/|T| (alignment with the mean target gradient) and Q = P·Pᵀ/(k·|T|): the target
Hessian replaced by the target Fisher (1/|T|) Σ_t g_t g_tᵀ, so Q needs nothing beyond P and
is never formed (Qw = P(Pᵀw)/(k|T|)). Two examples that move the targets the same way share
their weight: Q is the redundancy penalty. Weights sum to k, so 1 is "train on it once".

``solve_weights`` is projected gradient with step 1/L (L = η‖Q‖₂ + 2λ) onto the scaled
simplex; ``brute_force_weights`` enumerates every support and solves its KKT system — the
slow, exact reference for tiny problems.
"""

from __future__ import annotations

import itertools

import numpy as np


def project_to_simplex(x: np.ndarray, total: float) -> np.ndarray:
    """Euclidean projection onto {w ≥ 0, Σ w = total} (sort-based, Held et al.)."""
    u = np.sort(x)[::-1]
    cumulative = np.cumsum(u) - total
    index = np.arange(1, len(x) + 1)
    rho = np.nonzero(u - cumulative / index > 0)[0][-1]
    theta = cumulative[rho] / (rho + 1)
    return np.maximum(x - theta, 0.0)


def qp_terms(alignments: np.ndarray, eta: float, l2: float) -> tuple[np.ndarray, np.ndarray]:
    """(p̄, the dense matrix of the quadratic form η·Q + 2λI): for the reference and tests."""
    k, m = alignments.shape
    p = alignments.astype(np.float64)
    return p.mean(axis=1), eta * (p @ p.T) / (k * m) + 2 * l2 * np.eye(k)


def objective(w: np.ndarray, alignments: np.ndarray, eta: float, l2: float) -> float:
    linear, quadratic = qp_terms(alignments, eta, l2)
    return float(-linear @ w + 0.5 * w @ quadratic @ w)


def solve_weights(
    alignments: np.ndarray,
    eta: float = 1.0,
    l2: float = 0.01,
    iterations: int = 2000,
    tolerance: float = 1e-10,
) -> np.ndarray:
    """Weights (k,) ≥ 0 summing to k minimising f, by projected gradient from w = 1."""
    p = alignments.astype(np.float64)
    k, m = p.shape
    if k == 0:
        return np.zeros(0)
    linear = p.mean(axis=1)
    scale = eta / (k * m)
    lipschitz = scale * np.linalg.norm(p, 2) ** 2 + 2 * l2
    step = 1.0 / max(lipschitz, 1e-12)
    w = np.ones(k)
    for _ in range(iterations):
        gradient = -linear + scale * (p @ (p.T @ w)) + 2 * l2 * w
        updated = project_to_simplex(w - step * gradient, float(k))
        if np.max(np.abs(updated - w)) < tolerance:
            return updated
        w = updated
    return w


def brute_force_weights(alignments: np.ndarray, eta: float = 1.0, l2: float = 0.01) -> np.ndarray:
    """The exact minimiser by enumerating supports: each a linear KKT system. Tiny k only."""
    linear, quadratic = qp_terms(alignments, eta, l2)
    k = len(linear)
    best, best_value = None, np.inf
    for size in range(1, k + 1):
        for support in itertools.combinations(range(k), size):
            s = list(support)
            # minimise over w_s with Σ w_s = k: [Q_ss 1; 1ᵀ 0] [w; μ] = [p_s; k]
            system = np.zeros((size + 1, size + 1))
            system[:size, :size] = quadratic[np.ix_(s, s)]
            system[:size, size] = 1
            system[size, :size] = 1
            rhs = np.concatenate([linear[s], [k]])
            try:
                solution = np.linalg.solve(system, rhs)
            except np.linalg.LinAlgError:
                continue
            if np.any(solution[:size] < -1e-12):
                continue
            w = np.zeros(k)
            w[s] = np.maximum(solution[:size], 0)
            value = float(-linear @ w + 0.5 * w @ quadratic @ w)
            if value < best_value - 1e-15:
                best, best_value = w, value
    assert best is not None
    return best
