"""Landmark propagation: the streamed kernel regression against the dense formula, and
landmark scores against the exact ones on a toy store (correlation printed)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from stores import TINY_BUILD, build_store

from gradstore.config import BuildConfig
from gradstore.query import QueryEngine
from gradstore.selection import run_selection, validate_request
from gradstore.selection.base import ScoreRequest
from gradstore.selection.influence_distillation import landmark_rows
from gradstore.selection.landmarks import median_width, propagate, reference_propagate
from gradstore.store.datastore import Datastore
from gradstore.toy.corpus import generate_targets


def test_streamed_propagation_equals_the_dense_formula():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(41, 6)).astype(np.float32)
    rows = landmark_rows(41, 10, seed=3)
    p = rng.normal(size=(10, 3))
    blocks = [embeddings[i : i + 7] for i in range(0, 41, 7)]
    got = propagate(iter(blocks), 41, embeddings[rows], p)
    np.testing.assert_allclose(got, reference_propagate(embeddings, rows, p), rtol=1e-4, atol=1e-5)
    # landmarks are nearly interpolated (damping 1e-2)
    assert np.corrcoef(got[rows].ravel(), p.ravel())[0, 1] > 0.99


def test_median_width_and_landmark_sample():
    x = np.array([[0.0], [1.0], [3.0]])  # distances 1, 2, 3
    assert median_width(x) == pytest.approx(2.0)
    assert list(landmark_rows(5, 9, 0)) == [0, 1, 2, 3, 4]
    rows = landmark_rows(100, 10, 7)
    assert len(set(rows)) == 10 and list(rows) == sorted(rows)
    assert list(rows) == list(landmark_rows(100, 10, 7))


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory, toy_model_dir, toy_corpus):
    config = BuildConfig(**TINY_BUILD)
    root = tmp_path_factory.mktemp("id-toy")
    methods = ["influence_distillation", "rds"]
    return build_store(root, toy_model_dir, toy_corpus, config, methods)


def score_matrix(engine, targets, options):
    method, parsed = validate_request("influence_distillation", options)
    request = ScoreRequest(targets, parsed, engine.manifest.num_examples, per_target=True)
    return method.score(engine, request)


def test_landmark_scores_follow_the_exact_scores_on_a_toy_store(toy_store):
    engine = QueryEngine(Datastore.open(toy_store))
    targets = generate_targets(seed=3, per_family=1)
    n = engine.manifest.num_examples
    exact = score_matrix(engine, targets, {"mode": "exact"}).scores
    landmark = score_matrix(engine, targets, {"mode": "landmark", "landmarks": n // 2})
    assert landmark.details.landmarks == n // 2
    pearson = pearsonr(exact.ravel(), landmark.scores.ravel()).statistic
    spearman = np.mean(
        [spearmanr(exact[:, j], landmark.scores[:, j]).statistic for j in range(exact.shape[1])]
    )
    print(f"landmark (L={n // 2} of {n}) vs exact: Pearson {pearson:.3f}, Spearman {spearman:.3f}")
    assert pearson > 0.5 and spearman > 0.3
    # a LESS store's gradient features are a far better embedding than the hidden states
    over_gradients = score_matrix(
        engine, targets, {"mode": "landmark", "landmarks": n // 2, "embeddings": "gradients.adam"}
    ).scores
    pearson_gradients = pearsonr(exact.ravel(), over_gradients.ravel()).statistic
    print(f"over gradients.adam: Pearson {pearson_gradients:.3f}")
    assert pearson_gradients > pearson
    # and the selection runs end to end in both modes, weights summing to the budget
    for mode in ("exact", "landmark"):
        result = run_selection(engine, targets, "influence_distillation", top_k=10,
                               options={"mode": mode, "landmarks": n // 2})  # fmt: skip
        weights = [s.weight for s in result.selected]
        assert all(w is not None and w >= 0 for w in weights)
        assert sum(weights) == pytest.approx(10.0)
