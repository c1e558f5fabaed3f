"""BM25, DSIR and random answer on a 1,200-example store without loading any model."""

from __future__ import annotations

from unittest.mock import patch

import pytest
from stores import TINY_BUILD, build_store

from gradstore.config import BuildConfig
from gradstore.query import QueryEngine
from gradstore.selection import METHODS, run_selection
from gradstore.store.datastore import Datastore
from gradstore.toy.corpus import generate_corpus, generate_targets


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory, tiny_model_dir):
    pool = generate_corpus(seed=0, per_family=150)
    config = BuildConfig(
        **({k: v for k, v in TINY_BUILD.items() if k != "options"} | {"shard_size": 400})
    )
    return build_store(tmp_path_factory.mktemp("toy-1200"), tiny_model_dir, pool, config)


def refuse(*args, **kwargs):
    raise AssertionError("a model was loaded")


@pytest.mark.parametrize("method", [m for m, s in METHODS.items() if s.model == "none"])
def test_model_free_methods_never_load_the_model(toy_store, method):
    assert {"bm25", "dsir", "random"} <= {m for m, s in METHODS.items() if s.model == "none"}
    engine = QueryEngine(Datastore.open(toy_store))
    assert engine.manifest.num_examples == 1200
    targets = generate_targets(seed=1, per_family=4)
    with (
        patch("gradstore.features.modeling.load_base_model", refuse),
        patch("gradstore.features.modeling.load_tokenizer", refuse),
        patch("gradstore.features.checkpoint_model.CheckpointModel.__init__", refuse),
    ):
        result = run_selection(engine, targets, method, fraction=0.05)
    assert len(result.selected) == 60
    assert not engine.model_loaded and "tokenizer" not in engine.__dict__
