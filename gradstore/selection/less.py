"""LESS (Xia et al., 2024): learning-rate-weighted gradient cosine, max over subtasks.

score(z) = max_j Σ_i η_i ⟨q̄_ij, f_i(z)⟩ with f_i the stored (Adam-preconditioned, projected,
normalised) pool features and q̄_ij the mean of subtask j's normalised target gradients at
checkpoint i (the mean is not renormalised, as in the reference). The exact search scores
every subtask in one pass over the stored features (``FeatureScanner``). A store with an
approximate FAISS index can search it instead (``search: "index"``): the top-k of the max
over subtasks lies in the union of the per-subtask top-k, which is then rescored exactly.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
from pydantic import Field

from gradstore.errors import InvalidInputError
from gradstore.examples import Example
from gradstore.index import search
from gradstore.query import QueryEngine
from gradstore.search import top_k
from gradstore.selection.base import (
    MethodOptions,
    Selected,
    SelectionMethod,
    SelectionResult,
    group_by_subtask,
)


class LessOptions(MethodOptions):
    checkpoints: list[int] | None = Field(
        None, description="Use only these checkpoint indexes (default: all)."
    )
    aggregate: Literal["max", "mean"] = Field(
        "max", description="How subtask scores combine: the reference's max, or the mean."
    )
    pool_features: Literal["adam", "sgd"] = Field(
        "adam", description="Pool feature kind: Adam-preconditioned (reference) or plain."
    )
    search: Literal["index", "exact"] = Field(
        "index",
        description="The store's index: exact for 'Flat' stores, the approximate FAISS index "
        "otherwise (candidates rescored exactly); or 'exact' to scan every row.",
    )


def subtask_queries(
    features: np.ndarray, groups: dict[str, list[int]], weights: np.ndarray
) -> np.ndarray:
    """Q_j = concat_i(η_i · mean of subtask j's features at checkpoint i): (m, N·dim)."""
    rows = [weights[:, None] * features[positions].mean(axis=0) for positions in groups.values()]
    return np.stack(rows).reshape(len(rows), -1).astype(np.float32)


def rank(scores: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Positions of the best ``k`` by score, ties broken by the smaller row (deterministic)."""
    order = np.lexsort((rows, -scores.astype(np.float64)))
    return order[:k]


class Less(SelectionMethod):
    name = "less"
    Options = LessOptions

    def select(
        self,
        engine: QueryEngine,
        targets: list[Example],
        k: int,
        options: LessOptions,
        timings: dict[str, float],
    ) -> SelectionResult:
        manifest = engine.manifest
        if options.pool_features not in manifest.kinds:
            raise InvalidInputError(
                f"this datastore keeps pool features {manifest.kinds}, not "
                f"{options.pool_features!r}"
            )
        weights = engine.datastore.checkpoint_weights()
        if options.checkpoints is not None:
            known = [c.index for c in manifest.checkpoints]
            unknown = sorted(set(options.checkpoints) - set(known))
            if unknown or not options.checkpoints:
                raise InvalidInputError(
                    f"options.checkpoints must be a non-empty subset of {known}"
                )
            weights = weights * np.isin(known, options.checkpoints)
        features, positions, skipped = engine.target_features(targets, timings)
        kept_targets = [targets[p] for p in positions]
        groups = group_by_subtask(kept_targets)
        queries = subtask_queries(features, groups, weights)
        if options.aggregate == "mean":
            search_queries = queries.mean(axis=0, keepdims=True)
        else:
            search_queries = queries

        started = time.perf_counter()
        index = engine.index(options.pool_features) if options.search == "index" else None
        if index is not None:
            _, found = search(index, search_queries, k)
            candidates = np.unique(found[found >= 0])
            vectors = engine.datastore.rows(options.pool_features, candidates)
            per_subtask = vectors @ queries.T
        else:
            candidates = np.arange(manifest.num_examples)
            per_subtask = engine.scanner.scores(
                options.pool_features, queries.reshape(len(queries), len(weights), -1)
            )
        # the mean query's score is the mean of the subtask scores: no second product
        scores = per_subtask.max(axis=1) if options.aggregate == "max" else per_subtask.mean(axis=1)
        timings["search"] = (time.perf_counter() - started) * 1000

        started = time.perf_counter()
        best = top_k(scores, k) if index is None else rank(scores, candidates, k)
        names = list(groups)
        ids = engine.datastore.ids
        selected = [
            Selected(
                id=ids[candidates[i]],
                score=float(scores[i]),
                subtask=names[int(np.argmax(per_subtask[i]))],
            )
            for i in best
        ]
        timings["rank"] = (time.perf_counter() - started) * 1000
        return SelectionResult(
            method=self.name,
            selected=selected,
            num_candidates=manifest.num_examples,
            details={"skipped_targets": [{"id": s.id, "reason": s.reason} for s in skipped]},
        )
