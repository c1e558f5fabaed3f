"""DSIR's hashed n-grams against a plain re-reading of the reference's estimator."""

from __future__ import annotations

import hashlib
import itertools

import numpy as np

from gradstore.features.ngrams import NgramHasher, SparseCounts, log_probabilities, words

TEXTS = [
    "Q: 3+4\nA: 7",
    "Input: ~abc\nOutput: cba",
    "Please respond to this: %12 => even",
    "",
    "q: 3+4 a: 7 q: 3+4",
]


def dense_counts(text: str, buckets: int = 10_000) -> np.ndarray:
    """The reference's ``get_ngram_counts``: lower-case wordpunct words, unigrams and
    bigrams, sha256 hex digest as an integer modulo the bucket count."""
    tokens = words(text)
    grams = tokens + [f"{a} {b}" for a, b in itertools.pairwise(tokens)]
    counts = np.zeros(buckets, dtype=np.int64)
    for gram in grams:
        counts[int(hashlib.sha256(gram.encode("utf-8")).hexdigest(), 16) % buckets] += 1
    return counts


def test_words_follow_nltk_wordpunct():
    assert words("Q: 3+4=?\nIt's a--b") == [
        "q",
        ":",
        "3",
        "+",
        "4",
        "=?",
        "it",
        "'",
        "s",
        "a",
        "--",
        "b",
    ]


def test_sparse_counts_equal_the_dense_reference():
    counts = SparseCounts.of_texts(NgramHasher(), TEXTS)
    dense = np.stack([dense_counts(t) for t in TEXTS])
    for i in range(len(TEXTS)):
        row = slice(counts.offsets[i], counts.offsets[i + 1])
        rebuilt = np.zeros(10_000, dtype=np.int64)
        rebuilt[counts.buckets[row]] = counts.counts[row]
        np.testing.assert_array_equal(rebuilt, dense[i])
    values = np.random.default_rng(0).standard_normal((10_000, 3))
    np.testing.assert_allclose(counts.dot(values), dense @ values, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(counts.dot(values[:, 0]), dense @ values[:, 0], atol=1e-12)
    np.testing.assert_array_equal(NgramHasher().total_counts(TEXTS), dense.sum(axis=0))


def test_log_importance_weights_are_the_reference_formula():
    pool = np.stack([dense_counts(t) for t in TEXTS]).sum(axis=0)
    target = dense_counts("Q: 5+6\nA: 11")
    expected_diff = np.log(target / target.sum() + 1e-8) - np.log(pool / pool.sum() + 1e-8)
    got = log_probabilities(target[:, None])[:, 0] - log_probabilities(pool)
    np.testing.assert_allclose(got, expected_diff, rtol=1e-12)
    assert np.isfinite(log_probabilities(np.zeros(10))).all()  # an empty side stays finite
