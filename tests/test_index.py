import numpy as np
import pytest

from gradstore.selection.less import subtask_queries
from gradstore.selection.policies import ranked
from gradstore.store.index import build_faiss_index, search


def normalised(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("factory", ["Flat", "SQfp16"])
def test_index_top_k_equals_brute_force(factory):
    rng = np.random.default_rng(0)
    # fp16-representable vectors, as the store keeps them: SQfp16 is then exact as well
    vectors = normalised(rng, 500, 64).astype(np.float16).astype(np.float32)
    queries = rng.standard_normal((3, 64)).astype(np.float32)
    index = build_faiss_index(vectors, factory)
    scores, rows = search(index, queries, 25)
    brute = vectors @ queries.T
    for j in range(3):
        expected = np.argsort(-brute[:, j], kind="stable")[:25]
        assert set(rows[j]) == set(expected)
        np.testing.assert_allclose(scores[j], brute[rows[j], j], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(
        index.reconstruct_batch(rows[0].astype(np.int64)), vectors[rows[0]]
    )


def test_search_caps_k_at_index_size():
    vectors = normalised(np.random.default_rng(1), 10, 8)
    _, rows = search(build_faiss_index(vectors), vectors[:1], 50)
    assert rows.shape == (1, 10)


def test_subtask_queries_equal_the_weighted_formula():
    rng = np.random.default_rng(2)
    n_targets, n_ckpt, d = 5, 3, 16
    features = rng.standard_normal((n_targets, n_ckpt, d)).astype(np.float32)
    weights = np.array([0.5, 0.3, 0.2], dtype=np.float32)
    groups = {"a": [0, 2], "b": [1, 3, 4]}
    pool = rng.standard_normal((40, n_ckpt, d)).astype(np.float32)
    queries = subtask_queries(features, groups, weights)
    got = pool.reshape(40, -1) @ queries.T
    for j, positions in enumerate(groups.values()):
        expected = sum(
            weights[i] * np.mean([pool[:, i] @ features[t, i] for t in positions], axis=0)
            for i in range(n_ckpt)
        )
        np.testing.assert_allclose(got[:, j], expected, rtol=1e-5, atol=1e-5)


def test_rank_breaks_ties_by_row():
    scores = np.array([0.5, 0.9, 0.5, 0.9, 0.1], dtype=np.float32)
    rows = np.array([7, 3, 2, 1, 0])
    assert rows[ranked(scores, rows, 4)].tolist() == [1, 3, 2, 7]
