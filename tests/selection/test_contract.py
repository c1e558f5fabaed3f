"""The contract every registered method keeps, checked the day it registers.

Budgets, determinism under a seed, ties, unknown options, a missing artifact, subtasks, the
model it declares and the shape of its answer, on one tiny store holding every artifact.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from stores import DUPLICATES, copy_store, drop_artifact

from gradstore.errors import InvalidInputError, MissingArtifactError
from gradstore.examples import load_examples
from gradstore.query import QueryEngine
from gradstore.selection import METHODS, method_requirements, run_selection
from gradstore.selection.base import ScoreRequest
from gradstore.selection.policies import POLICIES
from gradstore.selection.set_function import SetFunction
from gradstore.store.datastore import Datastore
from gradstore.toy.corpus import generate_targets

METHOD_NAMES = sorted(METHODS)
TARGETS = [t for t in generate_targets(seed=3, per_family=2) if t.subtask in ("add", "reverse")]
# options that make a method's scores a pure function of the example (for the tie test)
DETERMINISTIC_SCORES = {"dsir": {"sampling": "top_k"}}


@pytest.fixture(scope="module")
def engine(contract_store) -> QueryEngine:
    return QueryEngine(Datastore.open(contract_store))


def ids_of(result):
    return [s.id for s in result.selected]


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_response_shape(engine, method):
    result = run_selection(engine, TARGETS, method, top_k=6)
    n = engine.manifest.num_examples
    assert result.method == method and result.num_candidates == n
    assert len(result.selected) == 6 and len(set(ids_of(result))) == 6
    assert set(ids_of(result)) <= set(engine.datastore.ids)
    assert all(isinstance(s.score, float) and math.isfinite(s.score) for s in result.selected)
    assert {s.subtask for s in result.selected} <= {"add", "reverse"}
    assert result.timings_ms["total"] >= result.timings_ms["rank"] >= 0
    assert isinstance(result.details, dict)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_budgets(engine, method):
    n = engine.manifest.num_examples
    assert len(run_selection(engine, TARGETS, method, top_k=1).selected) == 1
    assert len(run_selection(engine, TARGETS, method, fraction=0.1).selected) == math.ceil(0.1 * n)
    everything = run_selection(engine, TARGETS, method, top_k=n)
    assert sorted(ids_of(everything)) == sorted(engine.datastore.ids)
    assert ids_of(run_selection(engine, TARGETS, method, top_k=n + 7)) == ids_of(everything)
    for bad in ({"top_k": 0}, {"fraction": 0.0}, {"fraction": 1.5}, {}):
        with pytest.raises(InvalidInputError):
            run_selection(engine, TARGETS, method, **bad)


@pytest.mark.parametrize("method", METHOD_NAMES)
@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_every_policy_and_max_mean_rank_by_score(engine, method, policy):
    result = run_selection(engine, TARGETS, method, top_k=8, options={"aggregate": policy})
    assert len(set(ids_of(result))) == 8
    if policy != "round_robin":  # round-robin ranks in the order picked
        scores = [s.score for s in result.selected]
        assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_deterministic_and_seeded(contract_store, engine, method):
    first = run_selection(engine, TARGETS, method, top_k=10)
    again = run_selection(QueryEngine(Datastore.open(contract_store)), TARGETS, method, top_k=10)
    assert first.selected == again.selected
    if "seed" in METHODS[method].Options.model_fields:
        other = run_selection(engine, TARGETS, method, top_k=10, options={"seed": 1})
        assert ids_of(other) != ids_of(first)
        assert ids_of(run_selection(engine, TARGETS, method, top_k=10, options={"seed": 1})) == (
            ids_of(other)
        )


@pytest.mark.parametrize("method", sorted(set(METHOD_NAMES) - {"random"}))
def test_identical_examples_tie_and_rank_by_row(engine, method):
    """The pool holds one example twice: the scorer gives both the same scores (a set
    function: the same relevance), and every policy ranks the smaller row first."""
    first, second = (engine.datastore.row_of[i] for i in DUPLICATES)
    assert first < second
    selector = METHODS[method]
    options = selector.parse_options(DETERMINISTIC_SCORES.get(method, {}))
    scored = selector.score(engine, ScoreRequest(TARGETS, options, 10, per_target=True))
    if isinstance(scored, SetFunction):
        assert scored.relevance is not None
        np.testing.assert_array_equal(scored.relevance[first], scored.relevance[second])
    else:
        rows = list(scored.pool_rows())
        np.testing.assert_array_equal(
            scored.scores[rows.index(first)], scored.scores[rows.index(second)]
        )
    for policy in POLICIES:
        result = run_selection(
            engine, TARGETS, method, top_k=engine.manifest.num_examples,
            options=DETERMINISTIC_SCORES.get(method, {}) | {"aggregate": policy},
        )  # fmt: skip
        order = ids_of(result)
        assert order.index(DUPLICATES[0]) < order.index(DUPLICATES[1])
        if policy != "round_robin" and not isinstance(scored, SetFunction):
            scores = {s.id: s.score for s in result.selected}
            assert scores[DUPLICATES[0]] == scores[DUPLICATES[1]]
            assert order.index(DUPLICATES[1]) == order.index(DUPLICATES[0]) + 1 or any(
                scores[i] == scores[DUPLICATES[0]]
                for i in order[order.index(DUPLICATES[0]) + 1 : order.index(DUPLICATES[1])]
            )


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_unknown_options_are_refused_before_anything_loads(contract_store, method):
    engine = QueryEngine(Datastore.open(contract_store))
    with pytest.raises(InvalidInputError, match=f"options for method '{method}': bogus"):
        run_selection(engine, TARGETS, method, top_k=3, options={"bogus": 1})
    with pytest.raises(InvalidInputError, match="aggregate"):
        run_selection(engine, TARGETS, method, top_k=3, options={"aggregate": "median"})
    assert not engine.model_loaded and "tokenizer" not in engine.__dict__


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_a_missing_artifact_is_a_409_naming_it(contract_store, tmp_path, method):
    needed = method_requirements(method).artifacts
    if not needed:
        pytest.skip(f"{method} reads no artifact beyond the pool text")
    for artifact in needed:
        store = copy_store(contract_store, tmp_path / artifact)
        drop_artifact(store, artifact)
        engine = QueryEngine(Datastore.open(store))
        with pytest.raises(MissingArtifactError, match=f"no '{artifact}' artifact") as caught:
            run_selection(engine, TARGETS, method, top_k=3)
        assert caught.value.status == 409 and caught.value.artifact == artifact
        assert method in caught.value.detail
        assert not engine.model_loaded


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_subtasks(engine, method):
    one = [t for t in TARGETS if t.subtask == "add"]
    assert {s.subtask for s in run_selection(engine, one, method, top_k=5).selected} == {"add"}
    unnamed = load_examples([{"prompt": t.prompt, "completion": t.completion} for t in one])
    result = run_selection(engine, unnamed, method, top_k=5)
    assert {s.subtask for s in result.selected} == {"default"}
    result = run_selection(engine, TARGETS, method, top_k=6, options={"aggregate": "round_robin"})
    first_seen = list(dict.fromkeys(t.subtask for t in TARGETS))
    assert [s.subtask for s in result.selected] == first_seen * 3  # subtasks take turns


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_only_the_declared_model_is_loaded(contract_store, method):
    engine = QueryEngine(Datastore.open(contract_store))
    run_selection(engine, TARGETS, method, top_k=3)
    need = METHODS[method].model
    assert engine.model_loaded == (need != "none")
    assert ("checkpoints" in engine.models_used) == (need == "checkpoints")


def test_every_method_documents_itself():
    for method in METHODS.values():
        assert method.summary
        schema = method.Options.model_json_schema()
        assert schema.get("additionalProperties") is False
        assert "aggregate" in schema["properties"]
        assert np.all([p.get("description") for p in schema["properties"].values()])


# DELIFT's utility is how much an example helps the model answer the target in context:
# copying a demonstration's answer takes a trained model (tests/e2e/test_real_model.py checks
# it on SmolLM2); the tiny model here is random.
@pytest.mark.parametrize("method", [m for m in METHOD_NAMES if m not in ("random", "delift")])
def test_scores_point_the_right_way(engine, contract_store, method):
    """A target that is a copy of a pool example: every method must rank that example (or its
    planted twin) at the top, whatever its scale or direction of scores."""
    from gradstore.examples import read_jsonl

    pool = read_jsonl(contract_store.parent / "pool.jsonl")
    twins = {DUPLICATES[0], DUPLICATES[1], pool[5].id}
    for index in (5, 12, 25):
        copy = pool[index].model_copy(update={"id": "target", "subtask": "copy"})
        result = run_selection(engine, [copy], method, top_k=3)
        expected = twins if pool[index].id in twins else {pool[index].id}
        assert ids_of(result)[0] in expected, (method, index, ids_of(result))
