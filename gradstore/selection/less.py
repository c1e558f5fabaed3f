"""LESS (Xia et al., 2024): learning-rate-weighted gradient cosine, max over subtasks.

score(z) = max_j Σ_i η_i ⟨q̄_ij, f_i(z)⟩ with f_i the stored (Adam-preconditioned, projected,
normalised) pool features and q̄_ij the mean of subtask j's normalised target gradients at
checkpoint i (the mean is not renormalised, as in the reference). The exact search scores
every subtask in one pass over the stored features (``FeatureScanner``). A store with an
approximate FAISS index can search it instead (``search: "index"``): the top-k of the max
over subtasks lies in the union of the per-subtask top-k, which is then rescored exactly.
Under ``round_robin`` every target point is its own column (q not averaged).
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
from pydantic import Field

from gradstore.errors import InvalidInputError
from gradstore.selection.base import (
    MethodOptions,
    ScoreRequest,
    SelectionMethod,
    TargetDetails,
    skipped,
    target_columns,
)
from gradstore.selection.context import QueryContext
from gradstore.selection.scores import ScoreMatrix
from gradstore.store.datastore import gradient_artifact
from gradstore.store.index import search


class LessOptions(MethodOptions):
    checkpoints: list[int] | None = Field(
        None, description="Use only these checkpoint indexes (default: all)."
    )
    pool_features: Literal["adam", "sgd"] = Field(
        "adam", description="Pool feature kind: Adam-preconditioned (reference) or plain."
    )
    search: Literal["index", "exact"] = Field(
        "index",
        description="The store's index: exact for 'Flat' stores, the approximate FAISS index "
        "otherwise (candidates rescored exactly); or 'exact' to scan every row.",
    )
    target_eos: bool = Field(
        False,
        description="Append EOS to prompt/completion targets (the reference's evaluation sets "
        "do not; pool examples always end with it).",
    )


def subtask_queries(
    features: np.ndarray, groups: dict[str, list[int]], weights: np.ndarray
) -> np.ndarray:
    """Q_j = concat_i(η_i · mean of subtask j's features at checkpoint i): (m, N·dim)."""
    rows = [weights[:, None] * features[positions].mean(axis=0) for positions in groups.values()]
    return np.stack(rows).reshape(len(rows), -1).astype(np.float32)


class LessDetails(TargetDetails):
    """LESS's details: the targets it could not use."""


class Less(SelectionMethod[LessOptions, LessDetails]):
    name = "less"
    summary = "LESS: learning-rate-weighted cosine of LoRA gradient features (Xia et al., 2024)"
    Options = LessOptions
    Details = LessDetails
    model = "checkpoints"

    def artifacts(self, options: LessOptions) -> tuple[str, ...]:
        return (gradient_artifact(options.pool_features),)

    def _weights(self, ctx: QueryContext, options: LessOptions) -> np.ndarray:
        weights = ctx.pool.checkpoint_weights()
        if options.checkpoints is not None:
            known = [c.index for c in ctx.pool.manifest.checkpoints]
            unknown = sorted(set(options.checkpoints) - set(known))
            if unknown or not options.checkpoints:
                raise InvalidInputError(
                    f"options.checkpoints must be a non-empty subset of {known}"
                )
            weights = weights * np.isin(known, options.checkpoints)
        return weights

    def score(
        self, ctx: QueryContext, request: ScoreRequest[LessOptions]
    ) -> ScoreMatrix[LessDetails]:
        options = request.options
        weights = self._weights(ctx, options)
        features, positions, skips = ctx.target_encoder.target_features(
            request.targets, request.timings, eos=options.target_eos
        )
        kept = [request.targets[p] for p in positions]
        subtasks, column_subtask = target_columns(kept)
        if request.per_target:
            queries = (weights[None, :, None] * features).reshape(len(kept), -1)
            queries = queries.astype(np.float32)
        else:
            groups = {
                name: [i for i, c in enumerate(column_subtask) if c == j]
                for j, name in enumerate(subtasks)
            }
            queries = subtask_queries(features, groups, weights)
            column_subtask = list(range(len(subtasks)))

        started = time.perf_counter()
        kind = options.pool_features
        index = ctx.index(kind) if options.search == "index" else None
        if index is not None:
            # candidates: each column's top k, or the mean query's for the mean policy
            mean = options.aggregate == "mean"
            _, found = search(
                index, queries.mean(axis=0, keepdims=True) if mean else queries, request.k
            )
            rows = np.unique(found[found >= 0])
            scores = ctx.pool.rows(kind, rows) @ queries.T
        else:
            rows = None
            shaped = queries.reshape(len(queries), len(weights), -1)
            scores = ctx.scorer.scores(kind, shaped)
        request.timings["search"] = (time.perf_counter() - started) * 1000
        return ScoreMatrix(
            scores=scores,
            subtasks=subtasks,
            column_subtask=np.asarray(column_subtask),
            rows=rows,
            column_targets=[t.id for t in kept] if request.per_target else None,
            details=LessDetails(skipped_targets=skipped(skips)),
        )
