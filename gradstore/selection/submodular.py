"""Facility-location objectives over a sparse kernel, maximised by lazy greedy.

One family covers DELIFT's three objectives and the diversity policy. With S_ij the kernel
(how well candidate j represents point i; 0 where not stored), a floor e_i and a cap c_i:

    f(A) = w · Σ_i u_i [min(max(e_i, max_{j∈A} S_ij), c_i) − min(e_i, c_i)] + Σ_{j∈A} m_j

- facility location: e = 0, c = ∞, u = 1;
- FL mutual information against targets Q: e = 0, c_i = η·max_q S_iq;
- FL conditional gain given an existing set E: e_i = ν·max_{e∈E} S_ie, c = ∞;
- the diversity policy adds a modular term m_j (the method's own score) and weighs each
  point by u_i, the inverse of its mass in the kernel, so a group of copies counts once.

Each is monotone submodular, so a stale marginal gain is an upper bound on the fresh one:
lazy greedy (Minoux) recomputes only the candidate on top of the heap. Ties go to the smaller
row, as everywhere in selection. A gain costs O(points j covers), so a pick over a kernel
with K neighbours per point costs O(K) on average, not O(n).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np


@dataclass
class SparseKernel:
    """S as lists per candidate: ``points[indptr[j]:indptr[j+1]]`` are the points candidate
    j covers, with values ``values[...]`` (all ≥ 0)."""

    indptr: np.ndarray
    points: np.ndarray
    values: np.ndarray
    num_points: int

    @property
    def num_candidates(self) -> int:
        return len(self.indptr) - 1

    @classmethod
    def from_neighbours(
        cls,
        neighbours: np.ndarray,
        values: np.ndarray,
        num_candidates: int,
        self_value: float | None = None,
    ) -> SparseKernel:
        """From point-major lists: point i is covered by candidates ``neighbours[i]`` with
        ``values[i]`` (entries < 0 in ``neighbours`` are padding). ``self_value``: point i is
        also covered by candidate i (points and candidates are the same rows)."""
        n, width = neighbours.shape
        point = np.repeat(np.arange(n), width)
        candidate = neighbours.reshape(-1)
        value = values.reshape(-1).astype(np.float64)
        keep = candidate >= 0
        point, candidate, value = point[keep], candidate[keep], value[keep]
        if self_value is not None:
            point = np.concatenate([point, np.arange(n)])
            candidate = np.concatenate([candidate, np.arange(n)])
            value = np.concatenate([value, np.full(n, self_value)])
        return cls.from_triplets(point, candidate, value, n, num_candidates)

    @classmethod
    def from_triplets(
        cls,
        point: np.ndarray,
        candidate: np.ndarray,
        value: np.ndarray,
        num_points: int,
        num_candidates: int,
    ) -> SparseKernel:
        order = np.lexsort((point, candidate))
        counts = np.bincount(candidate, minlength=num_candidates)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(indptr, point[order].astype(np.int64), value[order], num_points)

    @classmethod
    def from_dense(cls, dense: np.ndarray) -> SparseKernel:
        """(points, candidates) dense matrix; zeros are dropped."""
        point, candidate = np.nonzero(dense)
        return cls.from_triplets(point, candidate, dense[point, candidate], *dense.shape)

    def to_dense(self) -> np.ndarray:
        out = np.zeros((self.num_points, self.num_candidates))
        for j in range(self.num_candidates):
            span = slice(self.indptr[j], self.indptr[j + 1])
            out[self.points[span], j] = np.maximum(out[self.points[span], j], self.values[span])
        return out

    def point_max(self, candidates: np.ndarray) -> np.ndarray:
        """max_{j ∈ candidates} S_ij for every point i (0 where none covers it)."""
        out = np.zeros(self.num_points)
        for j in candidates:
            span = slice(self.indptr[j], self.indptr[j + 1])
            np.maximum.at(out, self.points[span], self.values[span])
        return out


@dataclass(frozen=True)
class Objective:
    """Floor e, cap c and weight u (per point), coverage weight w, modular term m (per
    candidate)."""

    floor: np.ndarray | None = None
    cap: np.ndarray | None = None
    weight: float = 1.0
    modular: np.ndarray | None = None
    point_weight: np.ndarray | None = None


def lazy_greedy(
    kernel: SparseKernel, k: int, objective: Objective = Objective(), allowed=None
) -> tuple[np.ndarray, np.ndarray]:
    """(picked candidates in order, their marginal gains): greedy maximisation of f to k.

    ``allowed`` (bool per candidate) excludes the rest, e.g. an existing set.
    """
    n_points = kernel.num_points
    current = np.zeros(n_points) if objective.floor is None else objective.floor.astype(float)
    cap = np.full(n_points, np.inf) if objective.cap is None else objective.cap.astype(float)
    modular = objective.modular
    point_weight = objective.point_weight

    def gain(j: int) -> float:
        span = slice(kernel.indptr[j], kernel.indptr[j + 1])
        points = kernel.points[span]
        now = np.minimum(current[points], cap[points])
        covered = np.minimum(np.maximum(current[points], kernel.values[span]), cap[points])
        added = covered - now if point_weight is None else (covered - now) * point_weight[points]
        total = float(np.sum(added)) * objective.weight
        return total + (float(modular[j]) if modular is not None else 0.0)

    candidates = np.arange(kernel.num_candidates) if allowed is None else np.flatnonzero(allowed)
    heap = [(-gain(int(j)), int(j)) for j in candidates]
    heapq.heapify(heap)
    picked: list[int] = []
    gains: list[float] = []
    while heap and len(picked) < k:
        _, j = heapq.heappop(heap)
        fresh = gain(j)
        if heap and (-fresh, j) > heap[0]:
            heapq.heappush(heap, (-fresh, j))
            continue
        picked.append(j)
        gains.append(fresh)
        span = slice(kernel.indptr[j], kernel.indptr[j + 1])
        points = kernel.points[span]
        current[points] = np.maximum(current[points], kernel.values[span])
    return np.asarray(picked, dtype=np.int64), np.asarray(gains, dtype=np.float64)


def objective_value(dense: np.ndarray, chosen, objective: Objective = Objective()) -> float:
    """f(A) from scratch on a dense (points, candidates) kernel: the reference."""
    n = dense.shape[0]
    floor = np.zeros(n) if objective.floor is None else objective.floor
    cap = np.full(n, np.inf) if objective.cap is None else objective.cap
    chosen = list(chosen)
    best = dense[:, chosen].max(axis=1) if chosen else np.zeros(n)
    value = np.minimum(np.maximum(floor, best), cap) - np.minimum(floor, cap)
    if objective.point_weight is not None:
        value = value * objective.point_weight
    total = float(value.sum()) * objective.weight
    if objective.modular is not None:
        total += float(sum(objective.modular[j] for j in chosen))
    return total


def reference_greedy(
    dense: np.ndarray, k: int, objective: Objective = Objective(), allowed=None
) -> tuple[list[int], list[float]]:
    """Plain greedy re-evaluating f(A ∪ {j}) − f(A) for every candidate at every step."""
    chosen: list[int] = []
    gains: list[float] = []
    candidates = [j for j in range(dense.shape[1]) if allowed is None or allowed[j]]
    while len(chosen) < min(k, len(candidates)):
        base = objective_value(dense, chosen, objective)
        best_j, best_gain = -1, -np.inf
        for j in candidates:
            if j in chosen:
                continue
            g = objective_value(dense, [*chosen, j], objective) - base
            if g > best_gain + 1e-12:
                best_j, best_gain = j, g
        chosen.append(best_j)
        gains.append(best_gain)
    return chosen, gains
