"""DSIR (Xie et al., 2023): importance resampling on hashed n-gram features, no model.

The pool's per-example n-gram counts and its bucket distribution p_P are a store artifact
(``ngram_counts``); a query fits p_T on the targets' text (per subtask, or per target point
under round-robin) and scores every example by its log importance weight
Σ_b count_b(x)·(log p_T(b) − log p_P(b)). The reference *resamples*: it adds Gumbel noise to
the log weights and keeps the top k, a draw without replacement proportional to the weights
(``sampling: "resample"``, seeded); ``"top_k"`` keeps the largest weights instead.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
from pydantic import Field

from gradstore.artifacts import ARTIFACTS
from gradstore.artifacts.ngram_counts import NgramCounts
from gradstore.features.ngrams import NgramHasher, log_probabilities
from gradstore.selection.base import (
    MethodOptions,
    ScoreRequest,
    SelectionMethod,
    per_target_matrix,
    target_columns,
)
from gradstore.selection.baselines import NoDetails
from gradstore.selection.context import QueryContext
from gradstore.selection.scores import ScoreMatrix

ARTIFACT = "ngram_counts"


class DsirOptions(MethodOptions):
    sampling: Literal["resample", "top_k"] = Field(
        "resample",
        description="'resample': Gumbel top-k on the log importance weights, the reference's "
        "importance resampling; 'top_k': the largest weights.",
    )
    seed: int = Field(0, description="Seed of the resampling noise.")


class Dsir(SelectionMethod[DsirOptions, NoDetails]):
    name = "dsir"
    summary = "DSIR: hashed n-gram importance weights, target vs pool (Xie et al., 2023)"
    Options = DsirOptions
    Details = NoDetails

    def artifacts(self, options: DsirOptions) -> tuple[str, ...]:
        return (ARTIFACT,)

    def score(
        self, ctx: QueryContext, request: ScoreRequest[DsirOptions]
    ) -> ScoreMatrix[NoDetails]:
        options = request.options
        builder = ARTIFACTS[ARTIFACT]
        assert isinstance(builder, NgramCounts)
        started = time.perf_counter()
        shards = ctx.cached("dsir-shards", lambda: builder.shards(ctx.pool))
        pool_log_p = ctx.cached(
            "dsir-pool", lambda: log_probabilities(builder.pool_counts(ctx.pool))
        )
        request.timings["load"] = (time.perf_counter() - started) * 1000

        started = time.perf_counter()
        subtasks, column_subtask = target_columns(request.targets)
        hasher = NgramHasher()
        if request.per_target:
            groups = [[t.text()] for t in request.targets]
        else:
            groups = [
                [t.text() for t, c in zip(request.targets, column_subtask, strict=True) if c == j]
                for j in range(len(subtasks))
            ]
        target_counts = np.stack([hasher.total_counts(texts) for texts in groups], axis=1)
        log_diff = log_probabilities(target_counts) - pool_log_p[:, None]  # (buckets, columns)
        ctx.pool.check_unchanged()
        scores = np.concatenate([shard.dot(log_diff) for shard in shards])
        if options.sampling == "resample":
            noise = np.random.default_rng(options.seed).gumbel(size=len(scores))
            scores = scores + noise[:, None]
        request.timings["search"] = (time.perf_counter() - started) * 1000
        if request.per_target:
            return per_target_matrix(scores, request.targets)
        return ScoreMatrix.per_subtask(scores, subtasks)
