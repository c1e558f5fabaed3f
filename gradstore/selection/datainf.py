"""DataInf's closed-form inverse-Hessian-vector product per layer, and its influence scores.

DataInf (Kwon et al., 2024) replaces the layer's damped Gauss–Newton inverse
((1/n) Σ_i g_i g_iᵀ + λ I)⁻¹ by the mean of the per-example inverses (g_i g_iᵀ + λ I)⁻¹,
each exact by Sherman–Morrison, so the product with the mean target gradient v is

    h_l = (1/(n·λ_l)) Σ_i [ v_l − (v_l·g_il) / (λ_l + ‖g_il‖²) · g_il ],
    λ_l = 0.1 · mean_i(‖g_il‖² / p_l)   (p_l: the layer's parameter count),

and pool example k's influence on the targets is I(k) = −Σ_l h_l·g_kl (negative: removing
k raises the target loss, a proponent). We score by −I, higher is better.

``datainf_scores`` streams the pool in row blocks, twice, and holds only (n, m) and
(L, m, d) arrays — never a dense n × d matrix: with a_kl = v_l·g_kl and
u_l = Σ_i a_il/(λ_l + ‖g_il‖²) · g_il (pass 1),
score_k = Σ_l (n·a_kl − g_kl·u_l) / (n·λ_l) (pass 2). The per-target columns are linear in v,
so a subtask's mean column is exactly DataInf with v the subtask's mean target gradient.
``reference_ihvp`` / ``reference_scores`` are the slow versions the tests compare against.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from gradstore.store.search import _as_tensor

DAMPING = 0.1  # DataInf's λ_l = 0.1 · mean ‖g_l‖² / p_l
CHUNK_ROWS = 128  # pool rows widened to fp32 at a time (in cache, like FeatureScanner)

# one block of pool rows: (first row, directions (b, L, d) unit rows, norms (b, L))
PoolBlock = tuple[int, np.ndarray, np.ndarray]


def layer_damping(norms: np.ndarray, layer_sizes: np.ndarray) -> np.ndarray:
    """λ_l = 0.1 · mean_i(‖g_il‖² / p_l) from the (n, L) unprojected norms: (L,)."""
    squares = np.asarray(norms, dtype=np.float64) ** 2
    return DAMPING * squares.mean(axis=0) / np.asarray(layer_sizes, dtype=np.float64)


def reference_ihvp(gradients: np.ndarray, v: np.ndarray, damping: float) -> np.ndarray:
    """(1/n) Σ_i (g_i g_iᵀ + λ I)⁻¹ v with explicit inverses: (p,). Small p only."""
    n, p = gradients.shape
    total = np.zeros(p)
    for g in gradients.astype(np.float64):
        total += np.linalg.solve(np.outer(g, g) + damping * np.eye(p), v)
    return total / n


def closed_form_ihvp(gradients: np.ndarray, v: np.ndarray, damping: float) -> np.ndarray:
    """DataInf's h for one layer from dense gradients (n, p): the formula, vectorised."""
    g = gradients.astype(np.float64)
    coefficients = (g @ v) / (damping + (g * g).sum(axis=1))
    n = g.shape[0]
    return (n * v - coefficients @ g) / (n * damping)


def reference_scores(
    gradients: list[np.ndarray], targets: list[np.ndarray], layer_sizes: list[int]
) -> np.ndarray:
    """−I(k) per target: gradients[l] (n, p_l) pool, targets[l] (m, p_l); → (n, m)."""
    n, m = gradients[0].shape[0], targets[0].shape[0]
    out = np.zeros((n, m))
    for g, t, size in zip(gradients, targets, layer_sizes, strict=True):
        damping = DAMPING * float(np.mean((g.astype(np.float64) ** 2).sum(axis=1))) / size
        for j in range(m):
            out[:, j] += g @ closed_form_ihvp(g, t[j].astype(np.float64), damping)
    return out


def datainf_scores(
    blocks: Callable[[], Iterator[PoolBlock]],
    pool_norms: np.ndarray,
    target_directions: np.ndarray,
    target_norms: np.ndarray,
    layer_sizes: np.ndarray,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """(n, m) scores −I(k) of every pool row for every target, in two passes over ``blocks``.

    ``blocks()`` starts a fresh pass; ``pool_norms`` (n, L) are the unprojected norms (all of
    them are needed for λ_l before the first pass); targets are (m, L, d) and (m, L).
    """
    n = pool_norms.shape[0]
    damping = torch.as_tensor(layer_damping(pool_norms, layer_sizes), device=device)
    v = torch.as_tensor(target_directions, dtype=torch.float32, device=device)
    v = v * torch.as_tensor(target_norms, dtype=torch.float32, device=device)[:, :, None]
    num_layers, dim = v.shape[1], v.shape[2]
    u = torch.zeros(num_layers, v.shape[0], dim, dtype=torch.float64, device=device)
    first = torch.empty(n, v.shape[0], dtype=torch.float64, device=device)

    def chunks():
        """(first row, directions (r, L, d) float32 in a reused buffer, norms (r, L) float64):
        the pool widened from fp16 a cache-sized chunk at a time, as ``FeatureScanner``."""
        buffer = torch.empty(CHUNK_ROWS, num_layers, dim, device=device)
        for start, directions, norms in blocks():
            for offset in range(0, len(norms), CHUNK_ROWS):
                end = min(offset + CHUNK_ROWS, len(norms))
                rows = buffer[: end - offset]
                rows.copy_(_as_tensor(np.asarray(directions[offset:end])))
                s = _as_tensor(np.asarray(norms[offset:end])).to(device=device).double()
                yield start + offset, rows, s

    # g_kl = s_kl · d_kl: the norms scale the small products, never the (r, L, d) rows
    for start, d, s in chunks():  # pass 1: a_kl and u_l
        end = start + len(d)
        first[start:end] = 0
        for layer in range(num_layers):
            a = (d[:, layer] @ v[:, layer].T).double() * s[:, layer, None]  # (r, m)
            first[start:end] += a / damping[layer]
            c = a / (damping[layer] + s[:, layer, None] ** 2) * s[:, layer, None]
            u[layer] += (c.float().T @ d[:, layer]).double()
    u = (u / (n * damping[:, None, None])).float()
    out = torch.empty(n, v.shape[0], dtype=torch.float64, device=device)
    for start, d, s in chunks():  # pass 2: −I(k) = Σ_l h_l·g_kl
        end = start + len(d)
        out[start:end] = first[start:end]
        for layer in range(num_layers):
            out[start:end] -= (d[:, layer] @ u[layer].T).double() * s[:, layer, None]
    return out.cpu().numpy()
