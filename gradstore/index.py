"""FAISS inner-product indexes over concatenated checkpoint features.

LESS scores Σ_i η_i ⟨q_i, f_i⟩ = ⟨concat(η_i q_i), concat(f_i)⟩, so one inner-product index
over [f_1 | … | f_N] answers a subtask exactly in one search, with the learning-rate weights
put on the query side. ``Flat`` is exact; ``SQfp16`` is exact too for features stored in
fp16 (it holds the same half floats) at half the memory. The factory string is recorded.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from gradstore.errors import InvalidInputError
from gradstore.files import atomic_write_bytes
from gradstore.store import IndexEntry


def build_faiss_index(vectors: np.ndarray, factory: str = "Flat") -> faiss.Index:
    """An inner-product index over ``vectors`` (n, D) float32, trained if the factory needs it."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    try:
        index = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise InvalidInputError(f"FAISS cannot build index {factory!r}: {exc}") from None
    if not index.is_trained:
        index.train(vectors)
    index.add(vectors)
    return index


def write_index(root: Path, kind: str, index: faiss.Index, factory: str) -> IndexEntry:
    relative = f"index/{kind}.faiss"
    atomic_write_bytes(root / relative, faiss.serialize_index(index).tobytes())
    return IndexEntry(kind=kind, factory=factory, file=relative)


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, rows) per query; k is capped at the index size."""
    k = min(k, index.ntotal)
    scores, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return scores, rows
