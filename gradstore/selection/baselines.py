"""Baselines every method is reported beside: seeded random and BM25."""

from __future__ import annotations

import time
from functools import lru_cache

import numpy as np

from gradstore.examples import Example
from gradstore.query import QueryEngine
from gradstore.selection.base import (
    MethodOptions,
    Selected,
    SelectionMethod,
    SelectionResult,
    group_by_subtask,
)
from gradstore.selection.less import rank


class RandomOptions(MethodOptions):
    seed: int = 0


class RandomSelection(SelectionMethod):
    """A seeded uniform sample; subtasks are assigned round-robin for the report."""

    name = "random"
    Options = RandomOptions

    def select(self, engine, targets, k, options: RandomOptions, timings) -> SelectionResult:
        n = engine.manifest.num_examples
        rng = np.random.default_rng(options.seed)
        rows = rng.permutation(n)[:k]
        subtasks = list(group_by_subtask(targets))
        ids = engine.datastore.ids
        selected = [
            Selected(ids[r], float(k - i) / k, subtasks[i % len(subtasks)])
            for i, r in enumerate(rows)
        ]
        return SelectionResult(self.name, selected, n)


class Bm25Options(MethodOptions):
    k1: float = 1.5
    b: float = 0.75


@lru_cache(maxsize=4)
def _bm25_index(engine: QueryEngine, k1: float, b: float):
    import bm25s

    retriever = bm25s.BM25(k1=k1, b=b)
    corpus = bm25s.tokenize([e.text() for e in engine.pool_examples], show_progress=False)
    retriever.index(corpus, show_progress=False)
    return retriever


class Bm25Selection(SelectionMethod):
    """BM25 over prompt+completion text; one query per subtask, max over subtasks."""

    name = "bm25"
    Options = Bm25Options

    def select(
        self, engine, targets: list[Example], k, options: Bm25Options, timings
    ) -> SelectionResult:
        import bm25s

        started = time.perf_counter()
        retriever = _bm25_index(engine, options.k1, options.b)
        timings["index"] = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        groups = group_by_subtask(targets)
        per_subtask = []
        for positions in groups.values():
            query = " ".join(targets[p].text() for p in positions)
            tokens = bm25s.tokenize([query], show_progress=False, return_ids=False)[0]
            known = [t for t in tokens if t in retriever.vocab_dict]
            n = len(engine.datastore.ids)
            per_subtask.append(retriever.get_scores(known) if known else np.zeros(n))
        scores_by_subtask = np.stack(per_subtask, axis=1)
        scores = scores_by_subtask.max(axis=1)
        rows = np.arange(len(scores))
        best = rank(scores, rows, k)
        names = list(groups)
        ids = engine.datastore.ids
        selected = [
            Selected(ids[r], float(scores[r]), names[int(np.argmax(scores_by_subtask[r]))])
            for r in best
        ]
        timings["search"] = (time.perf_counter() - started) * 1000
        return SelectionResult(self.name, selected, len(scores))
