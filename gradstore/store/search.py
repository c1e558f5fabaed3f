"""Exact inner-product scores of many queries against the stored features, block by block.

LESS scores Σ_i η_i ⟨q_i, f_i(z)⟩ for every subtask. One pass over the memory-mapped fp16
shards computes all subtasks at once: each block of rows is widened to fp32 in a small
reused buffer (it stays in cache) and multiplied by the (subtasks × dim) queries of its
checkpoint, so the pool is read once per query, never copied whole, and the (n, subtasks)
score matrix is all that is kept. Coded stores (int8…int1) are read the same way: each
block of rows is decoded into the buffer instead of widened. On a CUDA device the shards are
copied to the GPU once (while they fit its free memory) and every later query is a few
matrix products there.

Why not a FAISS flat index: it holds its own fp32 copy of the vectors (3× the fp16 store),
scans once per query for fewer than 20 queries, and on a GPU returns at most 2048 rows per
query, while LESS needs every subtask's score of every row (max over subtasks, then top
5%). ``bench/query.py`` measures both. FAISS serves the approximate factories instead.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from gradstore.store.codes import STORE_DTYPES, CodedRows, FeatureCode
from gradstore.store.datastore import Datastore, FeatureBlock

BLOCK_ROWS = 128  # rows widened to fp32 at a time on CPU: 4 MiB at d = 8192, stays in cache


class FeatureScanner:
    """Scores (n, m) of m concatenated-checkpoint queries against every stored row."""

    def __init__(
        self,
        datastore: Datastore,
        device: str | torch.device = "cpu",
        gpu_cache_fraction: float = 0.8,
    ):
        self.datastore = datastore
        self.device = torch.device(device)
        self.gpu_cache_fraction = gpu_cache_fraction
        self._on_device: dict[tuple[str, int, int], torch.Tensor] = {}

    def scores(self, kind: str, queries: np.ndarray) -> np.ndarray:
        """``queries`` (m, N_checkpoints, dim) float32 → (n, m) float32: Σ_i ⟨q_ji, f_i(z)⟩."""
        manifest = self.datastore.manifest
        expected = (len(manifest.checkpoints), manifest.dim)
        if queries.ndim != 3 or queries.shape[1:] != expected:
            raise ValueError(f"queries must be (m, {expected[0]}, {expected[1]})")
        per_checkpoint = [
            torch.from_numpy(np.ascontiguousarray(queries[:, i], dtype=np.float32)).to(self.device)
            for i in range(queries.shape[1])
        ]
        blocks = self.datastore.feature_blocks(kind)
        return self._scan(kind, blocks, per_checkpoint, self.datastore.feature_code)

    def artifact_scores(self, name: str, queries: np.ndarray) -> np.ndarray:
        """``queries`` (m, dim) → (n, m): inner products with a row-sharded array artifact."""
        blocks = list(self.datastore.artifact_blocks(name))
        dim = blocks[0].arrays[0].shape[1] if blocks else queries.shape[-1]
        if queries.ndim != 2 or queries.shape[1] != dim:
            raise ValueError(f"queries must be (m, {dim})")
        query = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(self.device)
        return self._scan(name, iter(blocks), [query])

    def _scan(
        self,
        key: str,
        blocks: Iterator[FeatureBlock],
        queries: list[torch.Tensor],
        code: FeatureCode | None = None,
    ) -> np.ndarray:
        """(n, m) scores: Σ over each block's arrays of array · queries[i]ᵀ, block by block."""
        self.datastore.check_unchanged()
        m, dim = queries[0].shape
        out = torch.empty(self.datastore.num_examples, m, device=self.device)
        # reused for every block: a fresh large allocation would page-fault each time
        buffer = torch.empty(BLOCK_ROWS, dim)
        partial = torch.empty(BLOCK_ROWS, m)
        coded = None
        if code is not None and code.blocks == 1:  # scored from the codes, planes in order
            coded = _PlanarQueries(
                code,
                [q[:, code.planar_order].contiguous() for q in queries],
                [q.sum(dim=1) for q in queries],
                torch.empty(BLOCK_ROWS, code.code_bytes, dtype=torch.uint8),
            )
        for block in blocks:
            if self.device.type == "cuda":
                self._score_on_device(key, block, queries, out)
            else:
                self._score_on_cpu(block, queries, coded, out, buffer, partial)
        return out.cpu().numpy()

    def _score_on_cpu(
        self,
        block: FeatureBlock,
        queries: list[torch.Tensor],
        coded: _PlanarQueries | None,
        out: torch.Tensor,
        buffer: torch.Tensor,
        partial: torch.Tensor,
    ) -> None:
        for start in range(0, block.end - block.start, BLOCK_ROWS):
            end = min(start + BLOCK_ROWS, block.end - block.start)
            target = out[block.start + start : block.start + end]
            for i, array in enumerate(block.arrays):
                rows = buffer[: end - start]
                scores = target if i == 0 else partial[: end - start]
                if isinstance(array, CodedRows) and coded is not None:
                    # one scale per row: score the unsigned codes u, then fix the (rows, m)
                    # result: ⟨(u − offset)·Δ, q⟩ = Δ·(⟨u, q⟩ − offset·Σq)
                    raw = _as_tensor(array.raw[start:end])
                    planes = coded.code.unpack_planar(raw, rows, coded.scratch[: end - start])
                    torch.mm(planes, coded.queries[i].t(), out=scores)
                    scores.sub_(coded.sums[i][None, :] * coded.code.offset)
                    scores.mul_(coded.code.steps(raw))
                elif isinstance(array, CodedRows):
                    array.decode_into(start, end, rows.numpy())
                    torch.mm(rows, queries[i].t(), out=scores)
                else:
                    rows.copy_(_as_tensor(array[start:end]))
                    torch.mm(rows, queries[i].t(), out=scores)
                if i > 0:
                    target.add_(scores)

    def _score_on_device(
        self, kind: str, block: FeatureBlock, queries: list[torch.Tensor], out: torch.Tensor
    ) -> None:
        target = out[block.start : block.end]
        target.zero_()
        for i, array in enumerate(block.arrays):
            rows = self._device_rows(kind, i, block, array)
            target.addmm_(rows.float(), queries[i].t())

    def _device_rows(
        self, kind: str, checkpoint: int, block: FeatureBlock, array: np.ndarray | CodedRows
    ) -> torch.Tensor:
        key = (kind, checkpoint, block.start)
        if key in self._on_device:
            return self._on_device[key]
        rows = _as_tensor(np.asarray(array)).to(self.device)
        free, total = torch.cuda.mem_get_info(self.device)
        if free - rows.numel() * rows.element_size() > (1 - self.gpu_cache_fraction) * total:
            self._on_device[key] = rows
        return rows


@dataclass(frozen=True)
class _PlanarQueries:
    """Queries prepared once per scan for rows scored from their codes (one scale a row)."""

    code: FeatureCode
    queries: list[torch.Tensor]  # columns in the code's planar order
    sums: list[torch.Tensor]  # Σq of each query
    scratch: torch.Tensor  # (BLOCK_ROWS, code_bytes) uint8


class Searcher(Protocol):
    """Exact scores of queries against a store's gradient features: what LESS and the other
    gradient methods need of a search path (a GPU kernel plugs in here)."""

    def scores(self, kind: str, queries: np.ndarray) -> np.ndarray: ...


class BruteForceSearcher:
    """The slow reference: every row decoded whole, one float64 product (tests only)."""

    def __init__(self, datastore: Datastore, device: str | torch.device = "cpu"):
        self.datastore = datastore

    def scores(self, kind: str, queries: np.ndarray) -> np.ndarray:
        checkpoints = [c.index for c in self.datastore.manifest.checkpoints]
        rows = np.concatenate([self.datastore.features(kind, c) for c in checkpoints], axis=1)
        flat = queries.reshape(len(queries), -1).astype(np.float64)
        return (rows.astype(np.float64) @ flat.T).astype(np.float32)


# The registry, keyed by the feature ``dtype`` a manifest records: every float and coded
# store is scanned block by block today; a device kernel for one code registers here.
SEARCHERS: dict[str, Callable[[Datastore, str | torch.device], Searcher]] = {
    dtype: FeatureScanner for dtype in STORE_DTYPES
}


def make_searcher(datastore: Datastore, device: str | torch.device = "cpu") -> Searcher:
    """The searcher for the store's feature dtype."""
    dtype = datastore.manifest.dtype
    if dtype not in SEARCHERS:
        raise ValueError(f"no searcher for stored features of dtype {dtype!r}")
    return SEARCHERS[dtype](datastore, device)


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor view of a read-only memory map: torch only reads it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "array is not writable": never written
        return torch.from_numpy(array)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Rows of the ``k`` best scores, best first, ties broken by the smaller row."""
    n = scores.shape[0]
    k = min(k, n)
    if k < n:
        threshold = np.partition(scores, n - k)[n - k]
        candidates = np.flatnonzero(scores >= threshold)
    else:
        candidates = np.arange(n)
    order = np.lexsort((candidates, -scores[candidates].astype(np.float64)))
    return candidates[order[:k]]
