"""Landmark propagation: first-order scores of every example from L exact ones (RBF KRR).

Influence Distillation's scalability trick: compute exact alignments p_L only for L
landmark examples, then propagate them to every example e through a kernel over cheap
embeddings, p̂_e = K_eL·(K_LL + δ·mean(diag K_LL)·I)⁻¹·p_L, with the RBF kernel
exp(−‖x − y‖²/2σ²), σ the median pairwise distance of the landmarks (median heuristic) and
δ = 1e-2 as in the reference. ``propagate`` streams the pool's embeddings in blocks and
holds only the (L, L) kernel and (block, L) slices — never K_EL whole. ``reference_propagate``
builds every matrix densely, for the tests.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from gradstore.store.search import _as_tensor

DAMPING = 1e-2
MEDIAN_SAMPLE = 1000  # landmarks used for the median heuristic (the reference's cap)


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """‖a_i − b_j‖² (len(a), len(b)) without a (len(a), len(b), dim) temporary."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.maximum(d2, 0.0)


def median_width(landmarks: np.ndarray) -> float:
    """σ: the median pairwise distance among (at most the first 1000) landmarks."""
    x = landmarks[:MEDIAN_SAMPLE]
    d2 = squared_distances(x, x)
    upper = d2[np.triu_indices(len(x), k=1)]
    return max(float(np.sqrt(np.median(upper))) if upper.size else 1.0, 1e-6)


def rbf(a: np.ndarray, b: np.ndarray, width: float) -> np.ndarray:
    return np.exp(-squared_distances(a, b) / (2 * width**2))


def landmark_coefficients(
    landmarks: np.ndarray, p_landmarks: np.ndarray, damping: float = DAMPING
) -> tuple[np.ndarray, float]:
    """((K_LL + δ·mean diag·I)⁻¹ p_L (L, m), σ)."""
    width = median_width(landmarks)
    kernel = rbf(landmarks, landmarks, width)
    kernel[np.diag_indices_from(kernel)] += damping * float(np.mean(np.diag(kernel)))
    return np.linalg.solve(kernel, p_landmarks.astype(np.float64)), width


def propagate(
    blocks: Iterable[np.ndarray],
    n: int,
    landmarks: np.ndarray,
    p_landmarks: np.ndarray,
    damping: float = DAMPING,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """p̂ (n, m) for the pool whose embeddings come as consecutive row ``blocks``.

    The (L, L) solve is float64 on the CPU; the (n, L) kernel rows are float32 products on
    ``device``, block by block (at n = 100k, L = 4096 they are the method's main cost).
    """
    coefficients, width = landmark_coefficients(landmarks, p_landmarks, damping)
    anchors = torch.as_tensor(landmarks, dtype=torch.float32, device=device)
    anchor_squares = (anchors * anchors).sum(1)
    solved = torch.as_tensor(coefficients, dtype=torch.float32, device=device)
    out = np.empty((n, coefficients.shape[1]))
    start = 0
    for block in blocks:
        rows = _as_tensor(np.asarray(block)).to(device=device, dtype=torch.float32)
        d2 = (rows * rows).sum(1)[:, None] + anchor_squares[None, :] - 2 * rows @ anchors.T
        kernel = torch.exp(-d2.clamp_(min=0) / (2 * width**2))
        out[start : start + len(rows)] = (kernel @ solved).double().cpu().numpy()
        start += len(rows)
    if start != n:
        raise ValueError(f"the embedding blocks hold {start} rows, the pool {n}")
    return out


def reference_propagate(
    embeddings: np.ndarray, landmark_rows: np.ndarray, p_landmarks: np.ndarray
) -> np.ndarray:
    """The formula with every matrix dense: K_EL (K_LL + δ·I)⁻¹ p_L."""
    x = embeddings.astype(np.float64)
    landmarks = x[landmark_rows]
    sample = min(len(landmarks), MEDIAN_SAMPLE)
    squares = [
        np.sum((landmarks[i] - landmarks[j]) ** 2)
        for i in range(sample)
        for j in range(i + 1, sample)
    ]
    width = max(float(np.sqrt(np.median(squares))), 1e-6)

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.exp(-np.sum((a - b) ** 2) / (2 * width**2)))

    kernel = np.array([[k(a, b) for b in landmarks] for a in landmarks])
    kernel += DAMPING * np.eye(len(landmarks))  # the RBF diagonal is 1
    cross = np.array([[k(a, b) for b in landmarks] for a in x])
    return cross @ np.linalg.solve(kernel, p_landmarks)
