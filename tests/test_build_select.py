"""A whole build on a tiny model, then LESS answers checked against slow references."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gradstore.checkpoints import load_adam_moments, load_checkpoints
from gradstore.gradients import reference_per_example_gradients
from gradstore.modeling import load_base_model, load_lora_adapter
from gradstore.projection import DenseReferenceProjector
from tiny_assets import save_tiny_llama

from gradstore.build import (
    build_all,
    build_index,
    featurize_shard,
    plan_shards,
)
from gradstore.config import BuildConfig, LoraConfig, ProjectionConfig, WarmupConfig
from gradstore.errors import (
    InvalidInputError,
    ManifestMismatchError,
    NotReadyError,
    UnknownMethodError,
)
from gradstore.examples import load_examples, read_jsonl
from gradstore.files import sha256_file
from gradstore.query import QueryEngine
from gradstore.selection import run_selection
from gradstore.store import Datastore
from gradstore.tokenization import ExampleEncoder

CONFIG = BuildConfig(
    lora=LoraConfig(r=4, alpha=16, dropout=0.0),
    warmup=WarmupConfig(
        fraction=0.5, epochs=2, learning_rate=5e-3, batch_size=4, gradient_accumulation=1
    ),
    projection=ProjectionConfig(dim=256, seed=3),
    max_seq_len=48,
    batch_size=8,
    shard_size=7,
    pool_features=["adam", "sgd"],
)


def pool_records(n: int = 24) -> list[dict]:
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        a, b = rng.integers(0, 50, size=2)
        if i % 2:
            records.append({"id": f"add-{i}", "prompt": f"{a}+{b}=", "completion": str(a + b)})
        else:
            word = "".join(rng.choice(list("abcdef"), size=4))
            records.append({"id": f"rev-{i}", "prompt": f"rev {word}", "completion": word[::-1]})
    records.append({"id": "too-long", "prompt": "x" * 80, "completion": "y"})
    return records


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("build")
    model_dir = save_tiny_llama(root / "model")
    dataset = root / "pool.jsonl"
    dataset.write_text("".join(json.dumps(r) + "\n" for r in pool_records()))
    summary, manifest = build_all(root / "store", dataset, model_dir, CONFIG, progress=False)
    return root, summary, manifest


TARGETS = load_examples(
    [
        {"id": "t1", "prompt": "3+4=", "completion": "7", "subtask": "add"},
        {"id": "t2", "prompt": "10+21=", "completion": "31", "subtask": "add"},
        {"id": "t3", "prompt": "rev abcd", "completion": "dcba", "subtask": "rev"},
    ]
)


def test_build_reports_skips_and_writes_a_complete_manifest(built):
    root, summary, manifest = built
    assert [s.id for s in summary.skipped] == ["too-long"]
    assert manifest.num_examples == 24 and manifest.num_skipped == 1
    assert [c.index for c in manifest.checkpoints] == [1, 2]
    assert abs(sum(c.weight for c in manifest.checkpoints) - 1) < 1e-6
    assert manifest.dim == 256 and manifest.kinds == ["adam", "sgd"]
    store = root / "store"
    for relative, digest in manifest.files.items():
        assert sha256_file(store / relative) == digest
    assert Datastore.open(store).ids[0] == "rev-0"


def test_rerunning_a_shard_gives_identical_bytes(built):
    store = built[0] / "store"
    shard = plan_shards(store)[1]
    before = Datastore.open(store).manifest.files
    result = featurize_shard(store, shard)
    for relative, digest in result.files.items():
        assert before[relative] == digest


def reference_features(model_dir, checkpoint, examples, adam: bool) -> np.ndarray:
    """Slow path: autograd one example at a time, Adam formula by hand, dense projection."""
    base = load_base_model(model_dir, torch.device("cpu"))
    model = load_lora_adapter(base, checkpoint.path)
    grads = reference_per_example_gradients(model, examples, pad_token_id=0).double()
    if adam:
        m, v = (t.double() for t in load_adam_moments(checkpoint.path, model))
        grads = (0.9 * m + 0.1 * grads) / torch.sqrt(0.999 * v + 0.001 * grads**2 + 1e-8)
    projector = DenseReferenceProjector(grads.shape[1], CONFIG.projection.dim, 3)
    projected = projector.project(grads.float()).double()
    return (projected / projected.norm(dim=1, keepdim=True)).numpy()


def test_less_matches_a_brute_force_reference(built):
    root, _, manifest = built
    store = root / "store"
    engine = QueryEngine(Datastore.open(store))
    result = run_selection(engine, TARGETS, method="less", top_k=10)
    assert len(result.selected) == 10

    pool = [e for e in read_jsonl(root / "pool.jsonl") if e.id != "too-long"]
    tokenizer = engine.model.tokenizer
    encoder = ExampleEncoder(tokenizer, CONFIG.max_seq_len, "tulu")
    pool_tok, _ = encoder.encode_all(pool)
    target_tok, _ = encoder.encode_all(TARGETS)
    checkpoints = load_checkpoints(store / "checkpoints")
    weights = np.array([c.weight for c in manifest.checkpoints])
    groups = {"add": [0, 1], "rev": [2]}
    scores = np.full((len(pool_tok), len(groups)), 0.0)
    for weight, checkpoint in zip(weights, checkpoints, strict=True):
        f = reference_features(root / "model", checkpoint, pool_tok, adam=True)
        q = reference_features(root / "model", checkpoint, target_tok, adam=False)
        for j, positions in enumerate(groups.values()):
            scores[:, j] += weight * (f @ q[positions].T).mean(axis=1)
    best = scores.max(axis=1)
    expected = np.argsort(-best, kind="stable")[:10]
    got_rows = [engine.datastore.row_of[s.id] for s in result.selected]
    # fp16 storage moves scores by ~1e-3; compare scores, and the ranking where gaps allow
    np.testing.assert_allclose([s.score for s in result.selected], best[got_rows], atol=3e-3)
    assert len(set(got_rows) & set(expected.tolist())) >= 9
    names = list(groups)
    for s, row in zip(result.selected, got_rows, strict=True):
        assert (
            s.subtask == names[int(np.argmax(scores[row]))]
            or abs(scores[row, 0] - scores[row, 1]) < 3e-3
        )


def test_index_search_equals_exact_search_on_stored_features(built):
    engine = QueryEngine(Datastore.open(built[0] / "store"))
    for options in ({}, {"pool_features": "sgd"}, {"aggregate": "mean"}, {"checkpoints": [2]}):
        fast = run_selection(engine, TARGETS, "less", top_k=6, options=options)
        exact = run_selection(
            engine, TARGETS, "less", top_k=6, options=options | {"search": "exact"}
        )
        assert [s.id for s in fast.selected] == [s.id for s in exact.selected]
        np.testing.assert_allclose(
            [s.score for s in fast.selected], [s.score for s in exact.selected], rtol=1e-5
        )


def test_fraction_budget_and_baselines(built):
    engine = QueryEngine(Datastore.open(built[0] / "store"))
    for method in ("less", "bm25", "random"):
        result = run_selection(engine, TARGETS, method, fraction=0.25)
        assert len(result.selected) == 6
        assert len({s.id for s in result.selected}) == 6
        scores = [s.score for s in result.selected]
        assert scores == sorted(scores, reverse=True)
        assert "total" in result.timings_ms


def test_bad_requests_are_clear(built):
    engine = QueryEngine(Datastore.open(built[0] / "store"))
    with pytest.raises(UnknownMethodError, match="known: bm25, less, random"):
        run_selection(engine, TARGETS, "nope", top_k=3)
    with pytest.raises(InvalidInputError, match="exactly one"):
        run_selection(engine, TARGETS, "less", top_k=3, fraction=0.1)
    with pytest.raises(InvalidInputError, match="options for method 'less'"):
        run_selection(engine, TARGETS, "less", top_k=3, options={"bogus": 1})
    with pytest.raises(InvalidInputError, match="subset of"):
        run_selection(engine, TARGETS, "less", top_k=3, options={"checkpoints": [9]})


def test_tampered_or_unfinished_stores_are_refused(built, tmp_path):
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(built[0] / "store", copy)
    shard_file = next((copy / "features").rglob("*.npy"))
    data = bytearray(shard_file.read_bytes())
    data[-1] ^= 0xFF
    shard_file.write_bytes(bytes(data))
    with pytest.raises(ManifestMismatchError, match="does not match its checksum"):
        Datastore.open(copy)
    shard_file.unlink()
    with pytest.raises(ManifestMismatchError, match="is missing"):
        Datastore.open(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(NotReadyError):
        Datastore.open(copy)
    with pytest.raises(NotReadyError, match="not done"):
        build_index(copy)
