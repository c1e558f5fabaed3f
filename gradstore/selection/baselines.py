"""Baselines every method is reported beside: seeded random and BM25. Neither loads a model."""

from __future__ import annotations

import time

import numpy as np
from pydantic import Field

from gradstore.selection.base import (
    MethodDetails,
    MethodOptions,
    ScoreRequest,
    SelectionMethod,
    per_target_matrix,
    target_columns,
)
from gradstore.selection.context import QueryContext
from gradstore.selection.policies import PolicyName
from gradstore.selection.scores import ScoreMatrix


class RandomOptions(MethodOptions):
    aggregate: PolicyName = Field(
        "round_robin",
        description="With 'round_robin' (default) the report's subtasks take turns.",
    )
    seed: int = Field(0, description="Seed of the sample.")


class NoDetails(MethodDetails):
    """A method that reports nothing beside its selection: ``{}``."""


class RandomSelection(SelectionMethod[RandomOptions, NoDetails]):
    """A seeded uniform sample: every subtask column holds the same random scores, so the
    policy only decides which subtask each pick is reported under."""

    name = "random"
    summary = "A seeded uniform sample of the pool"
    Options = RandomOptions
    Details = NoDetails

    def score(
        self, ctx: QueryContext, request: ScoreRequest[RandomOptions]
    ) -> ScoreMatrix[NoDetails]:
        n = ctx.pool.num_examples
        order = np.random.default_rng(request.options.seed).permutation(n)
        scores = np.empty(n, dtype=np.float64)
        scores[order] = (n - np.arange(n)) / n
        subtasks, _ = target_columns(request.targets)
        return ScoreMatrix.per_subtask(np.repeat(scores[:, None], len(subtasks), 1), subtasks)


class Bm25Options(MethodOptions):
    k1: float = Field(1.5, gt=0, description="BM25 term-frequency saturation.")
    b: float = Field(0.75, ge=0, le=1, description="BM25 length normalisation.")


def _bm25_index(ctx: QueryContext, k1: float, b: float):
    import bm25s

    retriever = bm25s.BM25(k1=k1, b=b)
    corpus = bm25s.tokenize([e.text() for e in ctx.pool_examples], show_progress=False)
    retriever.index(corpus, show_progress=False)
    return retriever


class Bm25Selection(SelectionMethod[Bm25Options, NoDetails]):
    """BM25 (bm25s) over prompt+completion text: one query per subtask (its targets' text
    joined), or one per target point under round-robin."""

    name = "bm25"
    summary = "BM25 over the examples' text (bm25s)"
    Options = Bm25Options
    Details = NoDetails

    def score(
        self, ctx: QueryContext, request: ScoreRequest[Bm25Options]
    ) -> ScoreMatrix[NoDetails]:
        import bm25s

        options = request.options
        started = time.perf_counter()
        retriever = ctx.cached(
            ("bm25", options.k1, options.b), lambda: _bm25_index(ctx, options.k1, options.b)
        )
        request.timings["index"] = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        subtasks, column_subtask = target_columns(request.targets)
        if request.per_target:
            queries = [t.text() for t in request.targets]
        else:
            queries = [
                " ".join(
                    t.text() for t, c in zip(request.targets, column_subtask, strict=True) if c == j
                )
                for j in range(len(subtasks))
            ]
        n = ctx.pool.num_examples
        columns = []
        for query in queries:
            tokens = bm25s.tokenize([query], show_progress=False, return_ids=False)[0]
            known = [t for t in tokens if t in retriever.vocab_dict]
            columns.append(retriever.get_scores(known) if known else np.zeros(n))
        request.timings["search"] = (time.perf_counter() - started) * 1000
        scores = np.stack(columns, axis=1)
        if request.per_target:
            return per_target_matrix(scores, request.targets)
        return ScoreMatrix.per_subtask(scores, subtasks)
