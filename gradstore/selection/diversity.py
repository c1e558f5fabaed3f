"""Diversity-aware selection for every score-based method: facility location over candidates.

Gradient methods score near-duplicates equally, so a pool with many copies of one example
spends the budget on them (LESS's own stated limitation). With ``diversity:
"facility_location"`` the policy's ranking is cut to its best ``diversity_candidates`` × k
candidates C, and k of them are picked greedily for

    λ · Σ_{i∈C} u_i · max_{j∈A} K_ij + (1 − λ) · Σ_{j∈A} s_j

with K the *redundancy* of two candidates, their gradient features' cosine (LESS's
similarity) above a threshold τ rescaled to [0, 1] — (cos − τ) / (1 − τ), clipped — each
candidate keeping its ``NEIGHBOURS`` most similar; u_i = 1 / Σ_j K_ij, so that a group of m
copies weighs as much as one distinct candidate (without it, the coverage term would
*favour* examples that have copies, covering m points at once); s the method's scores
min-max scaled over C (for round-robin, the pick order: 1 for the first, falling to 0) and
λ ``diversity_weight``. A fresh candidate gains up to λ of coverage, a copy of a pick none,
so a copy wins only by its score. λ = 0 is the method's own ranking. The defaults (λ = 0.2,
τ = 0.8: near-copies only) selected fewer copies and more distinct examples of the target's
skill for every method on the toy bench; τ = 0 (plain cosine) also spreads the picks across
the skill, whose examples are alike in gradient space too (docs/benchmarks.md).
"""

from __future__ import annotations

import math

import numpy as np

from gradstore.selection.policies import POLICIES, Pick
from gradstore.selection.scores import ScoreMatrix
from gradstore.selection.submodular import Objective, SparseKernel, lazy_greedy
from gradstore.store.reader import PoolReader

NEIGHBOURS = 16  # most similar candidates each candidate keeps in the kernel
BLOCK = 1024  # candidate rows multiplied at a time


def redundancy(cosine: np.ndarray, threshold: float) -> np.ndarray:
    """(cos − τ) / (1 − τ) clipped to [0, 1]: 1 for a copy, 0 at or below τ."""
    if threshold >= 1:
        return (cosine >= 1).astype(np.float64)
    return np.clip((cosine - threshold) / (1 - threshold), 0.0, 1.0)


def candidate_kernel(
    features: np.ndarray, width: int = NEIGHBOURS, threshold: float = 0.0
) -> tuple[SparseKernel, np.ndarray]:
    """``redundancy`` of every candidate with its ``width`` most similar (itself: 1), and each
    candidate's mass: the sum of its row (1 for a candidate with no near copy, m for one of m
    exact copies)."""
    c = features.shape[0]
    width = min(width, c)
    neighbours = np.empty((c, width), dtype=np.int64)
    values = np.empty((c, width), dtype=np.float64)
    for start in range(0, c, BLOCK):
        block = features[start : start + BLOCK] @ features.T  # (b, c)
        for offset, row in enumerate(block.astype(np.float64)):
            i = start + offset
            row[i] = max(row[i], 1.0)  # a candidate represents itself fully
            order = np.lexsort((np.arange(c), -row))[:width]
            kept = redundancy(row[order], threshold)
            neighbours[i], values[i] = np.where(kept > 0, order, -1), kept
    return SparseKernel.from_neighbours(neighbours, values, c), values.sum(axis=1)


def scaled_scores(picks: list[Pick], policy: str) -> np.ndarray:
    if policy == "round_robin" or len(picks) < 2:
        return 1.0 - np.arange(len(picks)) / max(len(picks), 1)
    scores = np.array([p.score for p in picks], dtype=np.float64)
    low, high = scores.min(), scores.max()
    return (scores - low) / (high - low) if high > low else np.ones_like(scores)


def weighted_features(pool: PoolReader, rows: np.ndarray) -> np.ndarray:
    """[√η_1 f_1 | … | √η_N f_N]: inner products are LESS's Σ η_c ⟨f_c, f_c'⟩ (self 1)."""
    kind = pool.manifest.kinds[0]
    weights = pool.checkpoint_weights()
    features = pool.rows(kind, rows)
    dim = pool.manifest.dim
    scale = np.repeat(np.sqrt(weights / weights.sum()), dim).astype(np.float32)
    return features * scale[None, :]


def diversify(
    pool: PoolReader,
    matrix: ScoreMatrix,
    policy: str,
    k: int,
    weight: float,
    factor: float,
    threshold: float = 0.0,
) -> list[Pick]:
    """The k picks (in greedy order) of the trade-off above among the policy's best."""
    size = min(matrix.num_candidates, max(k, math.ceil(factor * k)))
    candidates = POLICIES[policy](matrix, size)
    if len(candidates) <= k and weight == 0:
        return candidates[:k]
    rows = np.array([p.row for p in candidates], dtype=np.int64)
    kernel, mass = candidate_kernel(weighted_features(pool, rows), threshold=threshold)
    objective = Objective(
        weight=weight,
        modular=(1 - weight) * scaled_scores(candidates, policy),
        point_weight=1.0 / mass,
    )
    order, _ = lazy_greedy(kernel, k, objective)
    return [candidates[int(i)] for i in order]
