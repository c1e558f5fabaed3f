"""DELIFT: the stored kernel, the utilities and the three objectives against slow references."""

from __future__ import annotations

import numpy as np
import pytest
from test_contract import TARGETS

from gradstore.artifacts import compute_artifact_unit, plan_artifact_units
from gradstore.artifacts.delift_kernel import load_kernel_parts
from gradstore.errors import InvalidInputError
from gradstore.features.icl_utility import InContextUtility, reference_distance
from gradstore.features.modeling import load_base_model, load_tokenizer
from gradstore.query import QueryEngine
from gradstore.selection import run_selection
from gradstore.selection.delift import min_max
from gradstore.selection.submodular import Objective, objective_value, reference_greedy
from gradstore.store.datastore import Datastore, TokenStore


@pytest.fixture(scope="module")
def store(contract_store) -> Datastore:
    return Datastore.open(contract_store)


@pytest.fixture(scope="module")
def model_and_tokens(store):
    model = load_base_model(store.manifest.model.path, "cpu")
    tokenizer = load_tokenizer(store.manifest.model.path)
    return model, tokenizer, TokenStore(store.root)


def reference_neighbours(store: Datastore, k: int) -> np.ndarray:
    """Dense LESS similarity of every pair, in float64."""
    weights = store.checkpoint_weights().astype(np.float64)
    kind = store.manifest.kinds[0]
    feats = [store.features(kind, c.index).astype(np.float64) for c in store.manifest.checkpoints]
    similarity = sum(w * f @ f.T for w, f in zip(weights, feats, strict=True))
    np.fill_diagonal(similarity, -np.inf)
    return np.argsort(-similarity, axis=1, kind="stable")[:, :k]


def dense_kernel(store: Datastore) -> np.ndarray:
    neighbours, utility, _ = load_kernel_parts(store)
    n = store.num_examples
    dense = np.eye(n)
    scaled = min_max(utility)
    for i in range(n):
        dense[i, neighbours[i]] = scaled[i]
    return dense


def test_batched_utilities_equal_one_pair_forwards(model_and_tokens):
    model, tokenizer, tokens = model_and_tokens
    bos = tokenizer.bos_token_id
    examples = [tokens[i] for i in (0, 3, 9, 17)]
    demos = [tokens[i] for i in (5, 30, 2, 11)]
    pairs = [(e, None) for e in examples] + list(zip(examples, demos, strict=True))
    batched = InContextUtility(model, tokenizer.pad_token_id or 0, bos, 3).distances(pairs)
    expected = [reference_distance(model, e, d, bos) for e, d in pairs]
    np.testing.assert_allclose(batched, expected, atol=1e-5)
    assert np.all((batched >= 0) & (batched <= 1))


def test_stored_kernel_equals_dense_neighbours_and_one_pair_utilities(store, model_and_tokens):
    model, tokenizer, tokens = model_and_tokens
    neighbours, utility, base = load_kernel_parts(store)
    n = store.num_examples
    assert neighbours.shape == (n, min(32, n - 1)) and utility.shape == neighbours.shape
    expected = reference_neighbours(store, neighbours.shape[1])
    # fp16 features: allow swaps between near-equal similarities, but not in the first few
    np.testing.assert_array_equal(neighbours[:, :3], expected[:, :3])
    assert all(i not in neighbours[i] for i in range(n))
    bos = tokenizer.bos_token_id
    for i in (0, 7, 33):
        alone = reference_distance(model, tokens[i], None, bos)
        assert base[i] == pytest.approx(alone, abs=1e-5)
        for position in (0, 5, neighbours.shape[1] - 1):
            j = int(neighbours[i, position])
            uf = alone - reference_distance(model, tokens[i], tokens[j], bos)
            assert utility[i, position] == pytest.approx(uf, abs=1e-5)


def test_kernel_units_rerun_to_identical_bytes(store, tmp_path):
    from stores import copy_store, one_thread

    root = copy_store(store.root, tmp_path / "store")
    manifest = Datastore.open(root).manifest
    unit = plan_artifact_units(root, "delift_kernel")[1]
    with one_thread():
        result = compute_artifact_unit(root, unit)
    for relative, digest in result.files.items():
        assert manifest.files[relative].sha256 == digest


def test_kernel_width_is_the_build_option(store):
    """``delift.neighbours`` sets K: the K nearest of the default kernel, the same utilities."""
    from gradstore.artifacts.delift_kernel import DeliftKernel
    from gradstore.config import DeliftConfig
    from gradstore.store.datastore import load_build_spec

    spec = load_build_spec(store.root)
    assert spec.config.delift.neighbours == 32
    narrow = spec.model_copy(
        update={"config": spec.config.model_copy(update={"delift": DeliftConfig(neighbours=5)})}
    )
    unit = plan_artifact_units(store.root, "delift_kernel")[0]
    neighbours, utility, _ = DeliftKernel().compute(store.root, narrow, unit, None, None).values()
    wide, wide_utility, _ = load_kernel_parts(store)
    rows = slice(unit.start, unit.end)
    np.testing.assert_array_equal(neighbours, wide[rows, :5])
    np.testing.assert_allclose(utility, wide_utility[rows, :5], rtol=1e-5, atol=1e-6)
    assert DeliftKernel().params(narrow)["neighbours"] == 5


def test_facility_location_is_greedy_over_the_dense_kernel(store):
    engine = QueryEngine(Datastore.open(store.root))
    result = run_selection(
        engine, TARGETS, "delift", top_k=8, options={"objective": "facility_location"}
    )
    expected, gains = reference_greedy(dense_kernel(store), 8)
    assert [engine.datastore.row_of[s.id] for s in result.selected] == expected
    np.testing.assert_allclose([s.score for s in result.selected], gains, atol=1e-9)
    assert not engine.model_loaded  # facility location needs no model at query time


def test_conditional_gain_covers_what_the_existing_set_does_not(store):
    engine = QueryEngine(Datastore.open(store.root))
    existing = [engine.datastore.ids[r] for r in (1, 4, 12)]
    options = {"objective": "conditional_gain", "existing_ids": existing, "nu": 1.0}
    result = run_selection(engine, TARGETS, "delift", top_k=6, options=options)
    dense = dense_kernel(store)
    floor = dense[:, [1, 4, 12]].max(axis=1)
    allowed = np.ones(len(dense), bool)
    allowed[[1, 4, 12]] = False
    expected, _ = reference_greedy(dense, 6, Objective(floor=floor), allowed)
    assert [engine.datastore.row_of[s.id] for s in result.selected] == expected
    assert not set(existing) & {s.id for s in result.selected}
    with pytest.raises(InvalidInputError, match="existing_ids"):
        run_selection(engine, TARGETS, "delift", top_k=3, options={"objective": "conditional_gain"})
    with pytest.raises(InvalidInputError, match="not in the pool"):
        options = {"objective": "conditional_gain", "existing_ids": ["nope"]}
        run_selection(engine, TARGETS, "delift", top_k=3, options=options)


def test_mutual_information_gains_add_up_to_the_objective(store):
    engine = QueryEngine(Datastore.open(store.root))
    result = run_selection(engine, TARGETS, "delift", top_k=10, options={"eta": 0.5})
    gains = result.details["gains"]
    assert gains == sorted(gains, reverse=True) and gains[0] > 0
    assert sum(s.score for s in result.selected) == pytest.approx(sum(gains))
    assert objective_value(dense_kernel(store), []) == 0.0


def test_mutual_information_is_greedy_against_the_target_utilities(store):
    from gradstore.selection.base import ScoreRequest
    from gradstore.selection.delift import Delift

    engine = QueryEngine(Datastore.open(store.root))
    options = Delift().parse_options({"target_neighbours": 5})
    request = ScoreRequest(TARGETS, options, 7, False)
    kept, relevance = Delift().target_relevance(engine, request)
    assert relevance.shape == (store.num_examples, len(kept))
    assert ((relevance > 0).sum(axis=0) <= 5).all() and relevance.max() == 1.0
    result = run_selection(engine, TARGETS, "delift", top_k=7, options={"target_neighbours": 5})
    expected, _ = reference_greedy(dense_kernel(store), 7, Objective(cap=relevance.max(axis=1)))
    assert [engine.datastore.row_of[s.id] for s in result.selected] == expected


def previous_delift(engine, targets, k, options):
    """DELIFT as it selected before set functions became a policy: its greedy inside the
    scorer, the picks dressed as a score matrix, then the request's policy (the old code)."""
    from gradstore.selection.base import ScoreRequest, per_target_matrix, target_columns
    from gradstore.selection.delift import Delift
    from gradstore.selection.policies import PER_TARGET_POLICIES, POLICIES
    from gradstore.selection.scores import ScoreMatrix
    from gradstore.selection.submodular import lazy_greedy

    method = Delift()
    parsed = method.parse_options(options)
    per_target = parsed.aggregate in PER_TARGET_POLICIES
    request = ScoreRequest(targets, parsed, k, per_target)
    kernel = method.kernel(engine)
    n, objective, allowed, relevance, kept = kernel.num_points, Objective(), None, None, targets
    if parsed.objective == "mutual_information":
        kept, relevance = method.target_relevance(engine, request)
        objective = Objective(cap=parsed.eta * relevance.max(axis=1))
    elif parsed.objective == "conditional_gain":
        existing = method.existing_rows(engine, parsed)
        objective = Objective(floor=parsed.nu * kernel.point_max(existing))
        allowed = np.ones(n, dtype=bool)
        allowed[existing] = False
    picked, gains = lazy_greedy(kernel, k, objective, allowed)
    subtasks, column_subtask = target_columns(kept)
    scores = np.zeros((len(picked), len(kept) if per_target else len(subtasks)))
    if relevance is None:
        scores[:] = gains[:, None]
    else:
        per_column = relevance[picked]
        if not per_target:
            per_column = np.stack(
                [per_column[:, np.asarray(column_subtask) == s].max(axis=1)
                 for s in range(len(subtasks))], axis=1,
            )  # fmt: skip
        scores[np.arange(len(picked)), per_column.argmax(axis=1)] = gains
    if per_target:
        matrix = per_target_matrix(scores, kept, rows=picked)
    else:
        matrix = ScoreMatrix.per_subtask(scores, subtasks, rows=picked)
    picks = POLICIES[parsed.aggregate](matrix, k)
    ids = engine.datastore.ids
    return [(ids[p.row], p.score, matrix.subtasks[p.subtask]) for p in picks], gains.tolist()


@pytest.mark.parametrize("policy", ["max", "mean", "round_robin"])
@pytest.mark.parametrize(
    "objective", ["mutual_information", "facility_location", "conditional_gain"]
)
def test_the_facility_location_policy_selects_as_delift_did(store, objective, policy):
    engine = QueryEngine(Datastore.open(store.root))
    options = {"objective": objective, "aggregate": policy}
    if objective == "conditional_gain":
        options["existing_ids"] = engine.datastore.ids[:3]
    result = run_selection(engine, TARGETS, "delift", top_k=9, options=options)
    expected, gains = previous_delift(engine, TARGETS, 9, options)
    assert [(s.id, s.score, s.subtask) for s in result.selected] == expected
    assert result.details == {"objective": objective, "gains": gains}
