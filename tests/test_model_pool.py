"""One model pool per process: the same key gives the same objects, and serving every method
(and building) loads the base weights once."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_assets import save_tiny_llama

import gradstore.store.model_pool as model_pool
from gradstore.features.checkpoint_model import CheckpointModel
from gradstore.features.checkpoints import load_checkpoints
from gradstore.features.modeling import load_base_model
from gradstore.query import QueryEngine
from gradstore.selection import METHODS, run_selection
from gradstore.store.datastore import Datastore, TokenStore
from gradstore.store.model_pool import ModelPool, model_key, store_model
from gradstore.toy.corpus import generate_targets

TARGETS = [t for t in generate_targets(seed=3, per_family=2) if t.subtask in ("add", "reverse")]


@pytest.fixture
def pool(monkeypatch) -> ModelPool:
    """A fresh process pool for this test."""
    fresh = ModelPool()
    monkeypatch.setattr(model_pool, "POOL", fresh)
    return fresh


def spec_of(store):
    return (
        store.manifest.model.path,
        load_checkpoints(store.root / "checkpoints"),
        store.manifest.config.projection,
    )


def test_the_same_key_gives_the_same_objects(contract_store, pool):
    store = Datastore.open(contract_store)
    path, checkpoints, projection = spec_of(store)
    base = pool.base(path, "cpu")
    assert pool.base(path, "cpu").model is base.model and pool.base(path).lock is base.lock
    model = pool.checkpoint_model(path, checkpoints, projection, "cpu")
    assert pool.checkpoint_model(path, checkpoints, projection, "cpu") is model
    again = pool.base(path, "cpu")  # now the checkpoint model's weights, adapters disabled
    assert again.model is model.model and again.lock is model.lock is base.lock
    assert pool.loads == 1 and len(pool.loaded()) == 1
    (key,) = pool.loaded()
    assert key == model_key(path, "cpu", checkpoints, projection)
    assert key.dtype == "float32" and key.device == "cpu" and len(key.adapters) == 3


def test_a_base_handle_given_before_the_adapters_still_runs_the_base(contract_store, pool):
    """The adapters go onto the pooled weights in place; a base handle taken earlier
    disables them when entered, so its outputs stay the plain base model's."""
    store = Datastore.open(contract_store)
    path, checkpoints, projection = spec_of(store)
    handle = pool.base(path, "cpu")
    ids = torch.tensor([TokenStore(store.root)[3].input_ids])
    with torch.no_grad(), handle.lock, handle.as_base():
        before = handle.model(input_ids=ids).logits
    model = pool.checkpoint_model(path, checkpoints, projection, "cpu")
    model.activate(max(model.checkpoints))
    reference = load_base_model(path, "cpu")
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
        with handle.lock, handle.as_base():
            after = handle.model(input_ids=ids).logits
        with_adapters = model.model(input_ids=ids).logits
    torch.testing.assert_close(before, expected)
    torch.testing.assert_close(after, expected)
    assert not torch.allclose(with_adapters, expected)  # the adapters are really there


def test_a_checkpoint_model_on_pooled_weights_featurizes_as_a_standalone_one(contract_store, pool):
    store = Datastore.open(contract_store)
    path, checkpoints, projection = spec_of(store)
    pool.base(path, "cpu")  # the base first: the checkpoint model is built on these weights
    pooled = pool.checkpoint_model(path, checkpoints, projection, "cpu")
    alone = CheckpointModel(path, checkpoints, projection, "cpu")
    examples = [TokenStore(store.root)[i] for i in (0, 7, 20)]
    for index in alone.checkpoints:
        got = pooled.featurizer(index, 2, adam=True).featurize(examples, ("adam", "sgd"))
        want = alone.featurizer(index, 2, adam=True).featurize(examples, ("adam", "sgd"))
        for kind in want:
            np.testing.assert_allclose(got[kind], want[kind], atol=1e-6)
    assert pool.loads == 1


def test_weights_beyond_the_capacity_evict_the_oldest(tmp_path, contract_store, pool):
    other = save_tiny_llama(tmp_path / "other", seed=1)
    first = pool.base(Datastore.open(contract_store).manifest.model.path, "cpu")
    second = pool.base(other, "cpu")
    assert second.model is not first.model and pool.loads == 2
    assert [k.path for k in pool.loaded()] == [str(other.resolve())]


def test_a_process_serving_every_method_loads_the_weights_once(contract_store, pool, monkeypatch):
    loads = []
    real = load_base_model

    def counting(*args, **kwargs):
        loads.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr("gradstore.features.modeling.load_base_model", counting)
    # RDS+ first: the base alone, which LESS's adapters then go onto in place
    order = ["rds", *sorted(set(METHODS) - {"rds"})]
    engine = QueryEngine(Datastore.open(contract_store), "cpu")
    for method in order:
        assert run_selection(engine, TARGETS, method, top_k=4).selected
    again = QueryEngine(Datastore.open(contract_store), "cpu")  # another engine, same store
    run_selection(again, TARGETS, "less", top_k=4)
    assert store_model(contract_store, "cpu") is engine.checkpoint_model()  # the build's too
    assert len(loads) == 1 and pool.loads == 1
