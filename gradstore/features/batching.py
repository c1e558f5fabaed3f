"""Batches bounded by rows and by padded tokens: the one batcher every model pass uses.

Activation memory grows with the padded tokens of a batch (rows × longest row), not with its
rows: on a real model a fixed row count either wastes a small machine's memory on long
examples or idles a large one on short ones. Sorting by length first keeps padding low.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence


def pack(
    positions: Iterable[int],
    lengths: Sequence[int] | Mapping[int, int],
    max_rows: int,
    max_tokens: int,
) -> Iterator[list[int]]:
    """``positions`` in their order, cut into batches of at most ``max_rows`` rows whose
    padded size (rows × longest length) stays within ``max_tokens``; a row longer than
    ``max_tokens`` makes a batch of its own."""
    batch: list[int] = []
    longest = 0
    for position in positions:
        length = lengths[position]
        wider = max(longest, length)
        if batch and (len(batch) >= max_rows or wider * (len(batch) + 1) > max_tokens):
            yield batch
            batch, wider = [], length
        batch.append(position)
        longest = wider
    if batch:
        yield batch


def length_sorted_batches(
    lengths: Sequence[int], max_rows: int, max_tokens: int
) -> Iterator[list[int]]:
    """Every position, shortest first (ties by position), packed by ``pack``."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return pack(order, lengths, max_rows, max_tokens)
