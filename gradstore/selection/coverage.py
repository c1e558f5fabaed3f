"""Per-target coverage: how many strong proponents each target point has in the pool.

In2Core's interpretable signal ("is this target covered by the pool?"). A pool example is a
*strong proponent* of a target when its score for that target lies ``z`` robust standard
deviations above the median of all scores (every target pooled, so counts compare across
targets: σ ≈ 1.4826 · MAD). A target with no strong proponent is one the pool does not
teach; its top proponents say what comes closest.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation


def strong_threshold(scores: np.ndarray, z: float) -> float:
    """median + z · 1.4826 · MAD over every score."""
    values = np.asarray(scores, dtype=np.float64).ravel()
    median = float(np.median(values))
    spread = MAD_TO_SIGMA * float(np.median(np.abs(values - median)))
    return median + z * spread


def coverage_report(
    scores: np.ndarray,
    ids: list[str],
    target_ids: list[str],
    target_subtasks: list[str],
    z: float = 3.0,
    top: int = 5,
) -> dict[str, Any]:
    """{"threshold", "z", "targets": [{"target", "subtask", "strong_proponents", "top"}]}."""
    threshold = strong_threshold(scores, z)
    targets = []
    for j, (target, subtask) in enumerate(zip(target_ids, target_subtasks, strict=True)):
        column = np.asarray(scores[:, j], dtype=np.float64)
        best = np.lexsort((np.arange(len(column)), -column))[:top]
        targets.append(
            {
                "target": target,
                "subtask": subtask,
                "strong_proponents": int((column > threshold).sum()),
                "top": [{"id": ids[i], "score": float(column[i])} for i in best],
            }
        )
    return {"threshold": threshold, "z": z, "targets": targets}
