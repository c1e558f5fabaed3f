"""DSIR's hashed n-gram features and importance weights (Xie et al., 2023; p-lambda/dsir).

An example's text is lower-cased, split into words and punctuation runs (NLTK's
``wordpunct`` rule), and its unigrams and bigrams are hashed into 10,000 buckets (sha256 of
the n-gram, modulo the bucket count, as the reference does). The pool and the target each
get a bag-of-buckets distribution p = counts / Σ counts; an example's log importance weight
is Σ_b count_b(x) · (log(p_T(b) + 1e-8) − log(p_P(b) + 1e-8)), the reference's estimator.
The per-example counts are stored sparse (CSR); the target side costs nothing to fit.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

WORDPUNCT = re.compile(r"\w+|[^\w\s]+")
NUM_BUCKETS = 10_000
MAX_ORDER = 2
EPSILON = 1e-8


def words(text: str) -> list[str]:
    return WORDPUNCT.findall(text.lower())


def ngrams(tokens: list[str], max_order: int = MAX_ORDER) -> Iterable[str]:
    """Unigrams, then bigrams, ... up to ``max_order``, each joined by one space."""
    for order in range(1, max_order + 1):
        for start in range(len(tokens) - order + 1):
            yield " ".join(tokens[start : start + order])


class NgramHasher:
    """Text → sorted (bucket, count) pairs; bucket hashes are memoised per n-gram."""

    def __init__(self, num_buckets: int = NUM_BUCKETS, max_order: int = MAX_ORDER):
        self.num_buckets = num_buckets
        self.max_order = max_order
        self._buckets: dict[str, int] = {}

    def bucket(self, ngram: str) -> int:
        found = self._buckets.get(ngram)
        if found is None:
            digest = hashlib.sha256(ngram.encode("utf-8")).digest()
            found = self._buckets[ngram] = int.from_bytes(digest, "big") % self.num_buckets
            if len(self._buckets) > 1 << 20:  # bound memory on huge vocabularies
                self._buckets.clear()
        return found

    def counts(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(buckets int32 ascending, counts int32) of one text."""
        tally = Counter(self.bucket(g) for g in ngrams(words(text), self.max_order))
        buckets = np.array(sorted(tally), dtype=np.int32)
        return buckets, np.array([tally[b] for b in buckets.tolist()], dtype=np.int32)

    def total_counts(self, texts: Iterable[str]) -> np.ndarray:
        """Bucket counts of all texts together: a distribution's raw counts (B,) int64."""
        total = np.zeros(self.num_buckets, dtype=np.int64)
        for text in texts:
            buckets, counts = self.counts(text)
            total[buckets] += counts
        return total


@dataclass(frozen=True)
class SparseCounts:
    """Per-example bucket counts as CSR: row i is entries[offsets[i]:offsets[i+1]]."""

    offsets: np.ndarray  # (n + 1,) int64
    buckets: np.ndarray  # (nnz,) int32
    counts: np.ndarray  # (nnz,) int32

    @classmethod
    def of_texts(cls, hasher: NgramHasher, texts: Iterable[str]) -> SparseCounts:
        rows = [hasher.counts(text) for text in texts]
        lengths = [len(b) for b, _ in rows]
        offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)
        if rows:
            buckets = np.concatenate([b for b, _ in rows]).astype(np.int32)
            counts = np.concatenate([c for _, c in rows]).astype(np.int32)
        else:
            buckets = counts = np.zeros(0, dtype=np.int32)
        return cls(offsets, buckets, counts)

    @property
    def num_rows(self) -> int:
        return len(self.offsets) - 1

    def dot(self, values: np.ndarray) -> np.ndarray:
        """(n,) Σ_b count_b(row) · values[b] for every row, (n, m) for values (B, m)."""
        columns = values.reshape(len(values), -1)
        rows = np.repeat(np.arange(self.num_rows), np.diff(self.offsets))
        out = np.empty((self.num_rows, columns.shape[1]), dtype=np.float64)
        for j in range(columns.shape[1]):
            weights = self.counts * columns[self.buckets, j].astype(np.float64)
            out[:, j] = np.bincount(rows, weights=weights, minlength=self.num_rows)
        return out if values.ndim == 2 else out[:, 0]


def log_probabilities(counts: np.ndarray) -> np.ndarray:
    """log(p + 1e-8) of a bucket distribution given its raw counts (the reference's form)."""
    total = counts.sum(axis=0, keepdims=True)
    probs = counts / np.maximum(total, 1)
    return np.log(probs + EPSILON)
