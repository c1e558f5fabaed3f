"""The diversity policy and explanations, on the contract store, for every method."""

from __future__ import annotations

import numpy as np
import pytest
from stores import DUPLICATES, contract_pool
from test_contract import METHOD_NAMES, TARGETS

from gradstore.query import QueryEngine
from gradstore.selection import run_selection
from gradstore.selection.diversity import candidate_kernel, scaled_scores, weighted_features
from gradstore.selection.policies import Pick
from gradstore.selection.submodular import Objective, lazy_greedy, reference_greedy
from gradstore.store.datastore import Datastore


@pytest.fixture(scope="module")
def engine(contract_store) -> QueryEngine:
    return QueryEngine(Datastore.open(contract_store))


def ids_of(result):
    return [s.id for s in result.selected]


def test_candidate_kernel_is_the_redundancy_of_each_ones_nearest():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(9, 4)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    cosine = features.astype(np.float64) @ features.T.astype(np.float64)
    for threshold in (0.0, 0.3):
        kernel, mass = candidate_kernel(features, width=3, threshold=threshold)
        dense = kernel.to_dense()
        np.testing.assert_allclose(mass, dense.sum(axis=1))
        expected = np.clip((cosine - threshold) / (1 - threshold), 0, 1)
        for i in range(9):
            kept = np.flatnonzero(dense[i])
            assert i in kept and len(kept) <= 3 and dense[i, i] == 1
            np.testing.assert_allclose(dense[i, kept], expected[i, kept], atol=1e-6)
            top3 = np.sort(cosine[i])[-3]
            assert np.all(cosine[i, kept] >= top3 - 1e-6)  # only its 3 most similar
            dropped = np.flatnonzero(dense[i] == 0)
            # dropped: not redundant at all, or not among its 3 most similar
            assert np.all((expected[i, dropped] == 0) | (cosine[i, dropped] <= top3 + 1e-6))


@pytest.mark.parametrize("method", ["less", "rds", "bm25"])
def test_diversity_is_greedy_facility_location_plus_scaled_score(engine, method):
    options = {
        "diversity": "facility_location", "diversity_weight": 0.4, "aggregate": "max",
        "diversity_threshold": 0.5,
    }  # fmt: skip
    result = run_selection(engine, TARGETS, method, top_k=5, options=options)
    plain = run_selection(engine, TARGETS, method, top_k=20, options={"aggregate": "max"})
    row_of = engine.datastore.row_of
    candidates = [Pick(row_of[s.id], s.score, 0, None) for s in plain.selected]
    rows = np.array([p.row for p in candidates])
    features = weighted_features(engine.pool, rows)
    dense = np.clip((features.astype(np.float64) @ features.T.astype(np.float64) - 0.5) / 0.5, 0, 1)
    np.fill_diagonal(dense, 1.0)
    top = np.argsort(-dense, axis=1, kind="stable")[:, :16]
    sparse = np.zeros_like(dense)
    np.put_along_axis(sparse, top, np.take_along_axis(dense, top, 1), 1)
    objective = Objective(
        weight=0.4,
        modular=0.6 * scaled_scores(candidates, "max"),
        point_weight=1 / sparse.sum(axis=1),
    )
    expected, _ = reference_greedy(sparse, 5, objective)
    assert ids_of(result) == [plain.selected[i].id for i in expected]


def test_a_group_of_copies_is_worth_one_example():
    """Point weights 1/mass: picking any of m exact copies covers as much as a singleton, so
    the policy neither favours examples that have copies nor takes a second copy."""
    rng = np.random.default_rng(1)
    distinct = rng.normal(size=(6, 16))
    distinct /= np.linalg.norm(distinct, axis=1, keepdims=True)
    features = np.concatenate([distinct, distinct[[2, 2, 2]]]).astype(np.float32)  # 2 ×4
    kernel, mass = candidate_kernel(features, threshold=0.95)
    np.testing.assert_allclose(mass, [1, 1, 4, 1, 1, 1, 4, 4, 4], atol=1e-5)
    picked, gains = lazy_greedy(kernel, 9, Objective(point_weight=1 / mass))
    assert picked[:6].tolist() == [0, 1, 2, 3, 4, 5]  # ties by row: copies come last
    np.testing.assert_allclose(gains, [1, 1, 1, 1, 1, 1, 0, 0, 0], atol=1e-5)


@pytest.mark.parametrize("method", ["less", "rds", "dsir", "bm25"])
def test_copies_only_setting_is_the_ranking_without_second_copies(engine, method):
    """τ near 1 and λ > ½: a copy of a pick never beats a new example, and new examples keep
    the method's order, so the selection is the plain ranking with later copies dropped."""
    n = engine.manifest.num_examples
    options = {
        "diversity": "facility_location", "diversity_weight": 0.6,
        "diversity_threshold": 0.99, "aggregate": "max",
    }  # fmt: skip
    plain = ids_of(run_selection(engine, TARGETS, method, top_k=n, options={"aggregate": "max"}))
    group = sorted([contract_pool()[5].id, *DUPLICATES], key=plain.index)  # three copies
    k = plain.index(group[-1]) + 2  # the budget reaches past the last copy
    expected = [i for i in plain if i not in group[1:]][:k]
    assert ids_of(run_selection(engine, TARGETS, method, top_k=k, options=options)) == expected


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_diversity_keeps_one_copy_of_a_duplicate(engine, method):
    n = engine.manifest.num_examples
    options = {"diversity": "facility_location", "diversity_weight": 1.0}
    chosen = ids_of(run_selection(engine, TARGETS, method, top_k=n // 2, options=options))
    assert len(set(chosen)) == n // 2
    assert not set(DUPLICATES) <= set(chosen)
    zero = {"diversity": "facility_location", "diversity_weight": 0.0, "aggregate": "max"}
    assert ids_of(run_selection(engine, TARGETS, method, top_k=7, options=zero)) == ids_of(
        run_selection(engine, TARGETS, method, top_k=7, options={"aggregate": "max"})
    )


@pytest.mark.parametrize("method", METHOD_NAMES)
@pytest.mark.parametrize("policy", ["max", "round_robin"])
def test_explanations_name_a_target_of_the_subtask_and_cover_every_target(engine, method, policy):
    options = {"aggregate": policy}
    plain = run_selection(engine, TARGETS, method, top_k=8, options=options)
    result = run_selection(engine, TARGETS, method, top_k=8, options=options, explain=True)
    assert result.selected == plain.selected  # explaining never changes the ranking
    assert plain.explanation is None and "explain" in result.timings_ms
    examples, targets = result.explanation["examples"], result.explanation["targets"]
    subtask_of = {t.id: t.subtask for t in TARGETS}
    assert [e["id"] for e in examples] == ids_of(result)
    for entry, selected in zip(examples, result.selected, strict=True):
        assert entry["subtask"] == selected.subtask
        assert subtask_of[entry["target"]] == entry["subtask"]
        assert 0 <= entry["share"] <= 1
    assert [t["id"] for t in targets] == [t.id for t in TARGETS]
    assert sum(t["pulled"] for t in targets) == 8
    for target in targets:
        scores = [s["score"] for s in target["strongest"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    if policy == "round_robin" and method not in ("delift", "random"):
        # each target point takes a turn within its subtask
        assert all(t["pulled"] == 2 for t in targets)
