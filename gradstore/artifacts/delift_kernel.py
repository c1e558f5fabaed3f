"""The ``delift_kernel`` artifact: DELIFT's in-context utility over each example's neighbours.

The full kernel needs n² pair forwards; each example i instead gets its K nearest neighbours
(``BuildConfig.delift.neighbours``, default 32) in the store's gradient space
(Σ_c η_c ⟨f_c(i), f_c(j)⟩, LESS's own similarity, self excluded, ties by row) and UF(i, j)
for those j only: n·(K + 1) forwards of the base model (K pairs and i alone). A unit holds
rows [start, end): their neighbours (int64), raw utilities (float32, unscaled: the min-max
scaling of the reference needs every unit, so the query applies it) and base distances
d(π_i(∅)). Units read the finished gradient features, so a worker schedules them after the
index stage (``needs_features``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gradstore.artifacts.base import ArtifactBuilder, ArtifactUnit, ProgressCallback
from gradstore.features.icl_utility import InContextUtility
from gradstore.store.datastore import BuildSpec, Datastore, TokenStore
from gradstore.store.model_pool import store_base_model
from gradstore.store.reader import PoolReader

PARTS = ("neighbours", "utility", "base")
QUERY_BLOCK = 128  # rows whose neighbours one pass over the features finds


def feature_kind(store: PoolReader) -> str:
    """The gradient features the neighbours come from: the first kind the store keeps."""
    return store.manifest.kinds[0]


def nearest_neighbours(store: Datastore, rows: np.ndarray, k: int) -> np.ndarray:
    """(len(rows), min(k, n − 1)) rows of each row's nearest neighbours, itself excluded.

    Exact: one blockwise pass over the features per ``QUERY_BLOCK`` rows, so memory stays
    n × ``QUERY_BLOCK`` scores; ties go to the smaller row.
    """
    from gradstore.store.search import FeatureScanner, top_k

    kind = feature_kind(store)
    weights = store.checkpoint_weights()
    scanner = FeatureScanner(store)
    width = min(k, store.num_examples - 1)
    out = np.empty((len(rows), width), dtype=np.int64)
    for start in range(0, len(rows), QUERY_BLOCK):
        block = rows[start : start + QUERY_BLOCK]
        queries = store.rows(kind, block).reshape(len(block), len(weights), -1)
        queries = (queries * weights[None, :, None]).astype(np.float32)
        scores = scanner.scores(kind, queries)  # (n, len(block))
        for offset, row in enumerate(block):
            column = scores[:, offset].copy()
            column[row] = -np.inf
            out[start + offset] = top_k(column, width)
    return out


class DeliftKernel(ArtifactBuilder):
    name = "delift_kernel"
    kind = "sparse_kernel"
    description = "DELIFT's in-context utility of each example's nearest neighbours (sparse kernel)"
    needs_model = True
    needs_features = True

    def unit_files(self, unit: ArtifactUnit) -> list[str]:
        stem = self.unit_stem(unit)
        return [f"{stem}.{part}.npy" for part in PARTS]

    def params(self, spec: BuildSpec) -> dict:
        return {
            "neighbours": spec.config.delift.neighbours,
            "neighbour_space": "LESS inner product of the gradient features (first kind)",
            "model": "base (no adapter)",
            "utility": "UF(i,j) = d(pi_i()) - d(pi_i(j)), d = ||pi - 1|| / sqrt(T), unscaled",
            "pair": "j's pool encoding, then i's without BOS; i's labelled tokens scored",
        }

    def compute(
        self,
        root: Path,
        spec: BuildSpec,
        unit: ArtifactUnit,
        device: str | None,
        on_batch: ProgressCallback | None,
    ) -> dict[str, np.ndarray]:
        store = Datastore.open(root)
        rows = np.arange(unit.start, unit.end)
        neighbours = nearest_neighbours(store, rows, spec.config.delift.neighbours)
        tokens = TokenStore(root)
        model, as_base = store_base_model(root, device)
        utility = InContextUtility(
            model.model, model.pad_token_id, model.tokenizer.bos_token_id,
            spec.config.batch_size, as_base, batch_tokens=spec.config.batch_tokens,
        )  # fmt: skip
        examples = [tokens[int(r)] for r in rows]
        pairs = [(examples[p], tokens[int(j)]) for p in range(len(rows)) for j in neighbours[p]]
        with model.lock:
            base = utility.distances([(e, None) for e in examples], on_batch=None)
            with_demo = utility.distances(pairs).reshape(neighbours.shape)
        if on_batch is not None:
            on_batch(len(rows))
        files = dict(zip(PARTS, self.unit_files(unit), strict=True))
        return {
            files["neighbours"]: neighbours,
            files["utility"]: (base[:, None] - with_demo).astype(np.float32),
            files["base"]: base.astype(np.float32),
        }


def load_kernel_parts(store: PoolReader) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(neighbours (n, K), raw utilities (n, K), base distances (n,)) of a store, in row order."""
    files = store.artifact_entry(DeliftKernel.name).files
    parts = {part: [f for f in files if f.endswith(f".{part}.npy")] for part in PARTS}
    arrays = [
        np.concatenate([store.artifact_array(DeliftKernel.name, f) for f in parts[p]])
        for p in PARTS
    ]
    return arrays[0], arrays[1], arrays[2]
