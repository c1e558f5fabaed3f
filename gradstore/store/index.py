"""FAISS inner-product indexes over concatenated checkpoint features, for approximate search.

LESS scores Σ_i η_i ⟨q_i, f_i⟩ = ⟨concat(η_i q_i), concat(f_i)⟩, so one inner-product index
over [f_1 | … | f_N] answers a subtask in one search, with the learning-rate weights on the
query side. Exact factories (``Flat``, ``SQfp16``) get no FAISS file: the fp16 feature
shards are the index, scanned by ``gradstore.store.search`` (a FAISS flat index would be an fp32
copy of them). Any other factory string (IVF, PQ, HNSW, ...) is built here by streaming the
shards: trained on a bounded sample, filled block by block, never the whole matrix in RAM.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import faiss
import numpy as np

from gradstore.errors import InvalidInputError
from gradstore.files import atomic_write_file
from gradstore.store.datastore import EXACT_FACTORIES, IndexEntry

TRAIN_SAMPLE_BYTES = 512 << 20  # fp32 training sample of an approximate index


def is_exact(factory: str) -> bool:
    return factory in EXACT_FACTORIES


def check_factory(factory: str, dim: int = 64) -> None:
    """Refuse a factory string FAISS cannot parse (before any work is done)."""
    if is_exact(factory):
        return
    try:
        faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise InvalidInputError(f"FAISS cannot build index {factory!r}: {exc}") from None


def build_faiss_index(vectors: np.ndarray, factory: str = "Flat") -> faiss.Index:
    """An inner-product index over ``vectors`` (n, D) float32 held in RAM (small inputs)."""
    return build_faiss_index_streaming(
        [np.ascontiguousarray(vectors, dtype=np.float32)], vectors.shape[1], factory, vectors
    )


def build_faiss_index_streaming(
    blocks: Iterable[np.ndarray], dim: int, factory: str, train_sample: np.ndarray
) -> faiss.Index:
    """Train on ``train_sample``, then add ``blocks`` (each (rows, dim) float32) one by one."""
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise InvalidInputError(f"FAISS cannot build index {factory!r}: {exc}") from None
    if not index.is_trained:
        index.train(np.ascontiguousarray(train_sample, dtype=np.float32))
    for block in blocks:
        index.add(np.ascontiguousarray(block, dtype=np.float32))
    return index


def train_sample_rows(num_rows: int, dim: int, seed: int = 0) -> np.ndarray:
    """Sorted rows of a seeded training sample whose fp32 copy fits ``TRAIN_SAMPLE_BYTES``."""
    size = min(num_rows, max(1, TRAIN_SAMPLE_BYTES // (4 * dim)))
    rows = np.random.default_rng(seed).choice(num_rows, size=size, replace=False)
    return np.sort(rows)


def write_index(root: Path, kind: str, index: faiss.Index, factory: str) -> IndexEntry:
    relative = f"index/{kind}.faiss"
    atomic_write_file(root / relative, lambda tmp: faiss.write_index(index, str(tmp)))
    return IndexEntry(kind=kind, factory=factory, file=relative)


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, rows) per query; k is capped at the index size."""
    k = min(k, index.ntotal)
    scores, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return scores, rows
