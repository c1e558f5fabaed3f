"""Artifacts: added to a ready store in units (nothing recomputed), and equal to references."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from stores import copy_store, one_thread
from test_embeddings import reference_pool
from test_ngrams import dense_counts

from gradstore.artifacts import (
    add_artifacts,
    artifact_unit_done,
    compute_artifact_unit,
    finish_artifact,
    missing_artifact_error,
    plan_artifact_units,
)
from gradstore.build import build_index
from gradstore.errors import (
    InvalidInputError,
    ManifestMismatchError,
    MissingArtifactError,
    NotReadyError,
)
from gradstore.examples import load_examples, read_jsonl
from gradstore.features.modeling import load_base_model
from gradstore.features.tokenization import ExampleEncoder
from gradstore.query import QueryEngine
from gradstore.selection import run_selection
from gradstore.store.datastore import Datastore

TARGETS = load_examples(
    [
        {"id": "t1", "prompt": "Q: 12+30\nA:", "completion": "42", "subtask": "add"},
        {"id": "t2", "prompt": "Input: ~abcd\nOutput:", "completion": "dcba", "subtask": "rev"},
    ]
)


def file_states(root):
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and p.name not in ("manifest.json", ".manifest.lock")
    }


def test_a_ready_store_gains_rds_without_recomputing_anything(less_only_store, tmp_path):
    store = copy_store(less_only_store, tmp_path / "store")
    before = file_states(store)
    engine = QueryEngine(Datastore.open(store))  # opened before the artifact exists
    with pytest.raises(MissingArtifactError, match="'hidden_states'") as caught:
        run_selection(engine, TARGETS, "rds", top_k=3)
    assert "POST /v1/datastores/{id}/methods" in caught.value.detail
    assert caught.value.status == 409 and caught.value.method == "rds"
    assert not engine.model_loaded  # refused before anything was loaded

    units = plan_artifact_units(store, "hidden_states")
    assert [(u.start, u.end) for u in units] == [(0, 10), (10, 20), (20, 30), (30, 34)]
    compute_artifact_unit(store, units[0])
    with pytest.raises(NotReadyError, match="3 units of artifact 'hidden_states' are not done"):
        finish_artifact(store, "hidden_states")
    assert run_selection(engine, TARGETS, "less", top_k=3).selected  # LESS answers meanwhile
    for unit in units[1:]:
        compute_artifact_unit(store, unit)
    manifest = finish_artifact(store, "hidden_states")
    assert finish_artifact(store, "hidden_states") == manifest  # idempotent

    entry = manifest.artifacts["hidden_states"]
    assert entry.files == [f"artifacts/hidden_states/{u.start:09d}-{u.end:09d}.npy" for u in units]
    assert all(np.load(store / f).dtype == np.float16 for f in entry.files)
    after = file_states(store)
    assert {k: after[k] for k in before} == before  # no byte and no mtime changed
    assert set(after) - set(before) == set(entry.files)
    Datastore.open(store, verify=True)
    result = run_selection(engine, TARGETS, "rds", top_k=5)  # the open engine picks it up
    assert len(result.selected) == 5
    from gradstore.store.model_pool import POOL

    assert engine.models_used == {"checkpoints", "base"}
    assert len(POOL.loaded()) == 1  # LESS loaded the checkpoint model: RDS+ reuses its weights


def test_artifact_units_rerun_to_identical_bytes_and_resume(contract_store, tmp_path):
    store = copy_store(contract_store, tmp_path / "store")
    manifest = Datastore.open(store).manifest
    for name in ("hidden_states", "ngram_counts"):
        for unit in plan_artifact_units(store, name):
            with one_thread():
                result = compute_artifact_unit(store, unit)
            for relative, digest in result.files.items():
                assert manifest.files[relative].sha256 == digest
    unit = plan_artifact_units(store, "hidden_states")[2]
    (store / f"artifacts/hidden_states/{unit.start:09d}-{unit.end:09d}.npy").unlink()
    assert not artifact_unit_done(store, unit)
    assert artifact_unit_done(store, plan_artifact_units(store, "hidden_states")[1])
    with one_thread():
        compute_artifact_unit(store, unit)
    Datastore.open(store, verify=True)


def test_add_artifacts_computes_only_what_is_missing(less_only_store, tmp_path):
    store = copy_store(less_only_store, tmp_path / "store")
    manifest = add_artifacts(store, ["ngram_counts", "gradients.adam"])
    assert set(manifest.artifacts) == {"gradients.adam", "ngram_counts"}
    assert not (store / "artifacts" / "hidden_states").exists()
    Datastore.open(store, verify=True)


def test_hidden_states_equal_one_example_forward_passes(contract_store):
    store = Datastore.open(contract_store)
    stored = np.concatenate([b.arrays[0] for b in store.artifact_blocks("hidden_states")])
    model = load_base_model(store.manifest.model.path, "cpu")
    for row in (0, 7, 33):
        ids = _token_ids(contract_store, row)
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        expected = reference_pool(hidden.hidden_states[-1][0].numpy())
        np.testing.assert_allclose(stored[row].astype(np.float32), expected, atol=2e-3)


def _token_ids(root, row):
    from gradstore.store.datastore import TokenStore

    return TokenStore(root)[row].input_ids


def test_ngram_counts_and_dsir_weights_equal_the_reference(contract_store):
    store = Datastore.open(contract_store)
    by_id = {e.id: e for e in read_jsonl(contract_store / "examples.jsonl")}
    dense = np.stack([dense_counts(by_id[i].text()) for i in store.ids])
    totals = np.load(contract_store / "artifacts/ngram_counts/pool_counts.npy")
    np.testing.assert_array_equal(totals, dense.sum(axis=0))
    target = dense_counts(TARGETS[0].text())
    log_diff = np.log(target / target.sum() + 1e-8) - np.log(totals / totals.sum() + 1e-8)
    expected = dense @ log_diff
    engine = QueryEngine(store)
    n = store.num_examples
    result = run_selection(engine, TARGETS[:1], "dsir", top_k=n, options={"sampling": "top_k"})
    got = {s.id: s.score for s in result.selected}
    np.testing.assert_allclose([got[i] for i in store.ids], expected, rtol=1e-9)
    assert not engine.model_loaded


def test_rds_scores_are_cosines_of_reference_embeddings(contract_store):
    store = Datastore.open(contract_store)
    engine = QueryEngine(store)
    n = store.num_examples
    targets = [TARGETS[0]]
    result = run_selection(engine, targets, "rds", top_k=n, options={"aggregate": "max"})
    model = load_base_model(store.manifest.model.path, "cpu")
    encoder = ExampleEncoder(engine.tokenizer, store.manifest.config.max_seq_len, "tulu")
    encoded = encoder.encode(targets[0], eos=False)  # the target encoding: no EOS
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([encoded.input_ids]), output_hidden_states=True)
    query = reference_pool(hidden.hidden_states[-1][0].numpy())
    pool = np.concatenate([b.arrays[0] for b in store.artifact_blocks("hidden_states")])
    expected = pool.astype(np.float64) @ query
    got = {s.id: s.score for s in result.selected}
    np.testing.assert_allclose([got[i] for i in store.ids], expected, atol=1e-5)
    assert engine.models_used == {"base"}  # RDS+ runs the base model, no adapters


def test_an_index_stage_run_again_keeps_finished_artifacts(contract_store, tmp_path):
    store = copy_store(contract_store, tmp_path / "store")
    manifest = build_index(store)  # e.g. its lease was lost and another worker reran it
    assert {"hidden_states", "ngram_counts", "gradients.adam"} <= set(manifest.artifacts)
    Datastore.open(store, verify=True)


def test_refresh_refuses_a_rebuilt_store(contract_store, tmp_path):
    import json

    store = copy_store(contract_store, tmp_path / "store")
    opened = Datastore.open(store)
    assert opened.refresh() is False
    raw = json.loads((store / "manifest.json").read_text())
    raw["artifacts"]["extra"] = dict(raw["artifacts"]["ngram_counts"], files=[])
    raw["files"]["ids.json"]["sha256"] = "0" * 64
    (store / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestMismatchError, match="rebuilt"):
        opened.refresh()
    os.utime(store / "ids.json")


def test_build_only_and_unknown_artifacts_are_refused(contract_store):
    with pytest.raises(InvalidInputError, match="made by the build"):
        plan_artifact_units(contract_store, "gradients.sgd")
    with pytest.raises(InvalidInputError, match="unknown artifact 'nope'"):
        plan_artifact_units(contract_store, "nope")
    error = missing_artifact_error("gradients.sgd", "less")
    assert "pool_features" in error.detail and "'sgd'" in error.detail
