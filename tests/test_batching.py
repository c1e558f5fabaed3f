"""Batches bounded by rows and padded tokens cover every position once, in order."""

from __future__ import annotations

import random

from gradstore.features.batching import length_sorted_batches, pack


def test_pack_bounds_rows_and_padded_tokens_and_keeps_order():
    rng = random.Random(0)
    lengths = [rng.randint(1, 300) for _ in range(500)]
    for max_rows, max_tokens in ((1, 10**9), (7, 10**9), (64, 512), (16, 256)):
        batches = list(pack(range(500), lengths, max_rows, max_tokens))
        assert [p for b in batches for p in b] == list(range(500))
        for batch in batches:
            assert len(batch) <= max_rows
            widest = max(lengths[p] for p in batch)
            assert widest * len(batch) <= max_tokens or len(batch) == 1


def test_a_row_longer_than_the_budget_runs_alone():
    assert list(pack(range(4), [10, 900, 10, 10], 8, 100)) == [[0], [1], [2, 3]]


def test_length_sorted_batches_sort_by_length_then_position():
    lengths = [5, 3, 5, 1, 3]
    assert list(length_sorted_batches(lengths, 2, 10**6)) == [[3, 1], [4, 0], [2]]
    assert list(length_sorted_batches(lengths, 10, 10)) == [[3, 1, 4], [0, 2]]
