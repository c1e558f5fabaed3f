"""The influence methods' artifacts: a ready store gains them, and their rows equal the
one-example-at-a-time references; Influence Distillation's Adam direction is its formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from stores import CONTRACT_BUILD, build_store, contract_pool, copy_store, one_thread
from test_artifacts import TARGETS, file_states

from gradstore.artifacts import add_artifacts
from gradstore.errors import MissingArtifactError
from gradstore.features.checkpoints import load_checkpoints
from gradstore.features.influence_features import (
    LAYER_GRADIENTS,
    UPDATE_DIRECTIONS,
    last_checkpoint,
    layer_featurizer,
    update_featurizer,
)
from gradstore.features.preconditioner import AdamUpdateDirection
from gradstore.query import QueryEngine
from gradstore.selection import extra_artifacts, run_selection
from gradstore.store.datastore import Datastore, TokenStore
from gradstore.store.model_pool import store_model


def test_adam_update_direction_is_the_papers_a_times_g():
    torch.manual_seed(0)
    v = torch.rand(10) * 1e-3
    g = torch.randn(3, 10)
    t, b1, b2, eps = 7, 0.9, 0.999, 1e-8
    v_hat = v / (1 - b2 ** (t + 1))
    a = ((1 - b1) / (1 - b1 ** (t + 1))) / (v_hat.sqrt() + eps)
    direction = AdamUpdateDirection(v, step=t)
    torch.testing.assert_close(direction(g), a * g)
    sliced = g[:, 4:9].clone()
    torch.testing.assert_close(direction.apply_(sliced, 4), (a * g)[:, 4:9])
    uncorrected = AdamUpdateDirection(v, step=None)
    torch.testing.assert_close(uncorrected(g), (1 - b1) / (v.sqrt() + eps) * g)


def test_influence_methods_are_opt_in_and_name_their_artifacts():
    assert extra_artifacts(["in2core"]) == [LAYER_GRADIENTS]
    assert extra_artifacts(["influence_distillation"]) == [UPDATE_DIRECTIONS]


def test_a_ready_store_gains_both_without_recomputing_anything(less_only_store, tmp_path):
    store = copy_store(less_only_store, tmp_path / "store")
    before = file_states(store)
    engine = QueryEngine(Datastore.open(store))
    for method in ("in2core", "influence_distillation"):
        with pytest.raises(MissingArtifactError):
            run_selection(engine, TARGETS, method, top_k=3)
    add_artifacts(store, [LAYER_GRADIENTS, UPDATE_DIRECTIONS])
    after = file_states(store)
    assert all(after[path] == state for path, state in before.items())
    assert run_selection(engine, TARGETS, "in2core", top_k=3).details["coverage"]["targets"]
    result = run_selection(engine, TARGETS, "influence_distillation", top_k=3)
    assert sum(s.weight for s in result.selected) == pytest.approx(3.0)

    # rows equal the reference loop: one example at a time at the last checkpoint
    datastore = Datastore.open(store)
    tokens = TokenStore(store)
    model = store_model(store)
    last = last_checkpoint(load_checkpoints(store / "checkpoints"))
    assert last.step is not None and last.step > 0
    rows = [0, 5, len(tokens) - 1]
    examples = [tokens[r] for r in rows]
    reference = update_featurizer(model, last, 1).featurize_one_at_a_time(examples, ("update",))
    stored = np.concatenate([b.arrays[0] for b in datastore.artifact_blocks(UPDATE_DIRECTIONS)])
    np.testing.assert_allclose(stored[rows], reference["update"], atol=2e-3)

    params = datastore.artifact_entry(LAYER_GRADIENTS).params
    single = layer_featurizer(model, last.index, params["layers"], params["dim_per_layer"], 1)
    directions, norms = single.featurize(examples)
    files = datastore.artifact_entry(LAYER_GRADIENTS).files
    stored_dirs = np.concatenate([np.load(store / f) for f in files[0::2]])
    stored_norms = np.concatenate([np.load(store / f) for f in files[1::2]])
    np.testing.assert_allclose(stored_dirs[rows], directions, atol=2e-3)
    np.testing.assert_allclose(stored_norms[rows], norms, rtol=1e-4)


def test_featurize_writes_the_update_directions_from_its_own_backward(
    tiny_model_dir, tmp_path, monkeypatch
):
    """A build serving Influence Distillation runs one backward per example per checkpoint:
    the last checkpoint's shards write a ⊙ g beside LESS's features, and those bytes are
    what the artifact's own unit computes."""
    from gradstore.artifacts import compute_artifact_unit, plan_artifact_units
    from gradstore.artifacts.influence import UpdateDirections

    def second_pass(*args, **kwargs):
        raise AssertionError("update_directions computed by a second pass over the pool")

    with monkeypatch.context() as patched:
        patched.setattr(UpdateDirections, "compute", second_pass)
        store = build_store(
            tmp_path, tiny_model_dir, contract_pool()[:20], CONTRACT_BUILD,
            ["less", "influence_distillation"],
        )  # fmt: skip
    manifest = Datastore.open(store, verify=True).manifest
    assert UPDATE_DIRECTIONS in manifest.artifacts
    for unit in plan_artifact_units(store, UPDATE_DIRECTIONS):
        (relative,) = UpdateDirections().unit_files(unit)
        (store / relative).unlink()
        with one_thread():
            result = compute_artifact_unit(store, unit)
        assert result.files[relative] == manifest.files[relative].sha256
