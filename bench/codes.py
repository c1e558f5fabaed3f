"""What each stored code (int8 … int1) keeps of the fp16 store's rankings, and what it costs.

Input: real-model features written by ``bench/projection_fidelity.py --save-features`` (the
pool's Adam features and the targets' SGD features of SmolLM2-135M-Instruct under the default
projection, and the exact unprojected scores). The pool is stored as each code would store
it (``gradstore.store.codes``: the build's own encoder) and decoded as a query decodes it; for each
code and scale block:

- bytes per example per checkpoint (what a shard row holds, scales included);
- the mean over targets of the Spearman of the pool ranking against the fp16 store's, and
  against the exact unprojected scores;
- the mean over targets of the overlap of the top 5% with the fp16 store's, and the overlap
  of LESS's selection (max over subtasks of the mean score of their targets, top 5%).

Search time per code is ``bench/query.py --dtype``'s.

    OMP_NUM_THREADS=1 python bench/codes.py --features smollm2-2048.npz --json

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from gradstore.store.codes import CODE_BITS, FeatureCode


def ranking_figures(scores: np.ndarray, reference: np.ndarray, top: int) -> tuple[float, float]:
    """Mean over targets (columns) of the Spearman and of the top-``top`` overlap."""
    rho, overlap = [], []
    for t in range(scores.shape[1]):
        rho.append(spearmanr(scores[:, t], reference[:, t]).statistic)
        a = set(np.argsort(-scores[:, t], kind="stable")[:top].tolist())
        b = set(np.argsort(-reference[:, t], kind="stable")[:top].tolist())
        overlap.append(len(a & b) / top)
    return float(np.mean(rho)), float(np.mean(overlap))


def less_selection(scores: np.ndarray, subtasks: int, top: int) -> set[int]:
    per_subtask = scores.reshape(scores.shape[0], subtasks, -1).mean(axis=2)
    return set(np.argsort(-per_subtask.max(axis=1), kind="stable")[:top].tolist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--subtasks", type=int, default=3, help="Targets come in equal groups.")
    parser.add_argument("--blocks", default="0,256", help="Scale blocks (0: one per row).")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    data = np.load(args.features)
    pool, targets, exact = data["pool"], data["targets"], data["exact"]
    n, dim = pool.shape
    top = max(1, round(0.05 * n))
    fp16 = pool.astype(np.float16).astype(np.float32)
    reference = fp16 @ targets.T
    reference_less = less_selection(reference, args.subtasks, top)

    rows = {}
    candidates: list[tuple[str, int | None]] = [("float16", None)]
    for dtype in CODE_BITS:
        for block in (int(b) for b in args.blocks.split(",")):
            if block == 0 or dim % block == 0:
                candidates.append((dtype, block or None))
    for dtype, block in candidates:
        if dtype == "float16":
            decoded, row_bytes = fp16, 2 * dim
        else:
            code = FeatureCode.of(dtype, dim, block)
            decoded, row_bytes = code.decode(code.encode(pool)), code.row_bytes
        scores = decoded @ targets.T
        rho, overlap = ranking_figures(scores, reference, top)
        rho_exact, _ = ranking_figures(scores, exact, top)
        less = less_selection(scores, args.subtasks, top)
        label = dtype if block is None else f"{dtype}/{block}"
        rows[label] = {
            "bytes_per_example_per_checkpoint": row_bytes,
            "spearman_vs_fp16": round(rho, 4),
            "top5_overlap_vs_fp16": round(overlap, 4),
            "less_top5_overlap_vs_fp16": round(len(less & reference_less) / top, 4),
            "spearman_vs_exact": round(rho_exact, 4),
        }
        print(label, rows[label], flush=True)
    result = {
        "benchmark": "codes",
        "machine": platform.machine(),
        "pool": n,
        "targets": targets.shape[0],
        "dim": dim,
        "top": top,
        "codes": rows,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
