"""A whole build on a tiny model, then LESS answers checked against slow references."""

from __future__ import annotations

import json
from unittest.mock import patch

import numpy as np
import pytest
import torch
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
from gradstore.features.checkpoints import load_adam_moments, load_checkpoints
from gradstore.features.gradients import reference_per_example_gradients
from gradstore.features.modeling import load_base_model, load_lora_adapter
from gradstore.features.projection import DenseReferenceProjector, SparseJLProjector, sparse_matrix
from gradstore.features.tokenization import ExampleEncoder
from gradstore.files import sha256_file
from gradstore.query import QueryEngine
from gradstore.selection import METHODS, run_selection
from gradstore.store.datastore import Datastore
from gradstore.store.search import FeatureScanner, top_k

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
    records.append({"id": "too-long", "prompt": "x" * 80, "completion": "y"})  # prompt cut
    return records


@pytest.fixture(scope="module", params=["sparse", "sjlt", "rademacher"])
def built(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("build")
    model_dir = save_tiny_llama(root / "model")
    dataset = root / "pool.jsonl"
    dataset.write_text("".join(json.dumps(r) + "\n" for r in pool_records()))
    config = CONFIG.model_copy(
        update={"projection": ProjectionConfig(dim=256, seed=3, kind=request.param)}
    )
    summary, manifest = build_all(root / "store", dataset, model_dir, config, progress=False)
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
    assert summary.truncated == 1  # its prompt lost tokens from the left; it is kept
    assert manifest.num_examples == 25 and manifest.num_skipped == 0
    assert [c.index for c in manifest.checkpoints] == [1, 2]
    assert abs(sum(c.weight for c in manifest.checkpoints) - 1) < 1e-6
    assert manifest.dim == 256 and manifest.kinds == ["adam", "sgd"]
    store = root / "store"
    for relative, entry in manifest.files.items():
        assert sha256_file(store / relative) == entry.sha256
        assert (store / relative).stat().st_size == entry.size
    assert not list(store.rglob("*.faiss"))  # exact search: the fp16 shards are the index
    for relative in manifest.files:
        if relative.startswith("features/"):
            assert np.load(store / relative).dtype == np.float16
    assert Datastore.open(store).ids[0] == "rev-0"


def test_rerunning_a_shard_gives_identical_bytes(built):
    store = built[0] / "store"
    shard = plan_shards(store)[1]
    before = Datastore.open(store).manifest.files
    result = featurize_shard(store, shard)
    for relative, digest in result.files.items():
        assert before[relative].sha256 == digest


def reference_features(model_dir, checkpoint, examples, adam: bool, kind: str) -> np.ndarray:
    """Slow path: autograd one example at a time, Adam formula by hand, dense projection."""
    base = load_base_model(model_dir, torch.device("cpu"))
    model = load_lora_adapter(base, checkpoint.path)
    grads = reference_per_example_gradients(model, examples, pad_token_id=0).double()
    if adam:
        m, v = (t.double() for t in load_adam_moments(checkpoint.path, model))
        grads = (0.9 * m + 0.1 * grads) / torch.sqrt(0.999 * v + 0.001 * grads**2 + 1e-8)
    if kind == "rademacher":
        matrix = DenseReferenceProjector(grads.shape[1], CONFIG.projection.dim, 3).matrix
    elif kind == "sparse":  # the default: s = 4 nonzeros per input coordinate
        matrix = sparse_matrix(3, grads.shape[1], CONFIG.projection.dim, 4).double()
    else:
        matrix = SparseJLProjector(grads.shape[1], CONFIG.projection.dim, 3).matrix().double()
    projected = grads @ matrix
    return (projected / projected.norm(dim=1, keepdim=True)).numpy()


@pytest.mark.parametrize("target_eos", [False, True])
def test_less_matches_a_brute_force_reference(built, target_eos):
    """Pool examples end with EOS; targets only when ``target_eos`` asks (the reference's
    evaluation sets have none)."""
    root, _, manifest = built
    store = root / "store"
    engine = QueryEngine(Datastore.open(store))
    options = {"target_eos": True} if target_eos else None
    result = run_selection(engine, TARGETS, method="less", top_k=10, options=options)
    assert len(result.selected) == 10

    pool = [e for e in read_jsonl(root / "pool.jsonl") if e.id != "too-long"]
    encoder = ExampleEncoder(engine.tokenizer, CONFIG.max_seq_len, "tulu")
    pool_tok, _ = encoder.encode_all(pool)
    target_tok, _ = encoder.encode_all(TARGETS, eos=target_eos)
    checkpoints = load_checkpoints(store / "checkpoints")
    weights = np.array([c.weight for c in manifest.checkpoints])
    groups = {"add": [0, 1], "rev": [2]}
    scores = np.full((len(pool_tok), len(groups)), 0.0)
    for weight, checkpoint in zip(weights, checkpoints, strict=True):
        kind = manifest.projection["kind"]
        f = reference_features(root / "model", checkpoint, pool_tok, adam=True, kind=kind)
        q = reference_features(root / "model", checkpoint, target_tok, adam=False, kind=kind)
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
    assert engine.index("adam") is None  # a Flat store is searched exactly
    for options in ({}, {"pool_features": "sgd"}, {"aggregate": "mean"}, {"checkpoints": [2]}):
        fast = run_selection(engine, TARGETS, "less", top_k=6, options=options)
        exact = run_selection(
            engine, TARGETS, "less", top_k=6, options=options | {"search": "exact"}
        )
        assert [s.id for s in fast.selected] == [s.id for s in exact.selected]
        np.testing.assert_allclose(
            [s.score for s in fast.selected], [s.score for s in exact.selected], rtol=1e-5
        )


def test_scan_equals_brute_force_over_the_stored_features(built):
    """The blockwise scan: all subtasks at once, equal to one dense fp64 product."""
    store = Datastore.open(built[0] / "store")
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((3, 2, 256)).astype(np.float32)
    dense = np.concatenate([store.features("adam", c) for c in (1, 2)], axis=1)
    expected = dense.astype(np.float64) @ queries.reshape(3, -1).T.astype(np.float64)
    for block_rows in (1, 5, 256):
        with patch("gradstore.store.search.BLOCK_ROWS", block_rows):
            got = FeatureScanner(store).scores("adam", queries)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(store.rows("adam", np.array([5, 0, 23])), dense[[5, 0, 23]])


def test_top_k_breaks_ties_by_row_and_equals_a_full_sort():
    scores = np.array([0.5, 0.9, 0.5, 0.9, 0.1, 0.5], dtype=np.float32)
    assert top_k(scores, 4).tolist() == [1, 3, 0, 2]
    assert top_k(scores, 10).tolist() == [1, 3, 0, 2, 5, 4]
    random = np.random.default_rng(1).integers(0, 20, size=500).astype(np.float32)
    for k in (1, 7, 250, 500):
        assert top_k(random, k).tolist() == np.lexsort((np.arange(500), -random))[:k].tolist()


def test_an_approximate_faiss_index_is_built_by_streaming_and_rescored(built, tmp_path):
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(built[0] / "store", copy)
    spec = json.loads((copy / "build.json").read_text())
    spec["config"]["index_factory"] = "IVF1,Flat"  # one list: approximate path, exact answer
    (copy / "build.json").write_text(json.dumps(spec))
    (copy / "manifest.json").unlink()
    manifest = build_index(copy)
    assert [e.file for e in manifest.indexes] == ["index/adam.faiss", "index/sgd.faiss"]
    engine = QueryEngine(Datastore.open(copy))
    assert engine.index("adam").ntotal == 25
    exact = QueryEngine(Datastore.open(built[0] / "store"))
    for options in ({}, {"aggregate": "mean"}):
        got = run_selection(engine, TARGETS, "less", top_k=6, options=options)
        want = run_selection(exact, TARGETS, "less", top_k=6, options=options)
        assert [s.id for s in got.selected] == [s.id for s in want.selected]


def test_fraction_budget_and_baselines(built):
    engine = QueryEngine(Datastore.open(built[0] / "store"))
    for method in ("less", "bm25", "random"):
        result = run_selection(engine, TARGETS, method, fraction=0.28)  # 7 of 25
        assert len(result.selected) == 7
        assert len({s.id for s in result.selected}) == 7
        scores = [s.score for s in result.selected]
        assert scores == sorted(scores, reverse=True)
        assert "total" in result.timings_ms


def test_bad_requests_are_clear(built):
    engine = QueryEngine(Datastore.open(built[0] / "store"))
    with pytest.raises(UnknownMethodError, match="known: " + ", ".join(sorted(METHODS))):
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
    engine = QueryEngine(Datastore.open(copy))
    run_selection(engine, TARGETS, "less", top_k=3)
    shard_file = next((copy / "features").rglob("*.npy"))
    data = bytearray(shard_file.read_bytes())
    data[-1] ^= 0xFF
    with open(shard_file, "r+b") as handle:  # in place: the mapped pages change too
        handle.write(bytes(data))
    with pytest.raises(ManifestMismatchError, match="changed on disk"):
        run_selection(engine, TARGETS, "less", top_k=3)
    Datastore.open(copy)  # same size: opening is a stat per file, the bytes are not read
    with pytest.raises(ManifestMismatchError, match="does not match its checksum"):
        Datastore.open(copy, verify=True)
    shard_file.write_bytes(bytes(data[:-2]))
    with pytest.raises(ManifestMismatchError, match=r"has \d+ bytes, the manifest promised \d+"):
        Datastore.open(copy)
    shard_file.unlink()
    with pytest.raises(ManifestMismatchError, match="is missing"):
        Datastore.open(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(NotReadyError):
        Datastore.open(copy)
    with pytest.raises(NotReadyError, match="not done"):
        build_index(copy)


def test_a_schema_1_store_opens_and_ranks_as_before(built, tmp_path):
    """Stores of the first format (dense projection, fp32 FAISS copy) are still served."""
    import shutil

    import faiss

    root, _, manifest = built
    if manifest.projection["kind"] != "rademacher":
        pytest.skip("schema 1 stores were all built with the dense projection")
    copy = tmp_path / "store"
    shutil.copytree(root / "store", copy)
    raw = json.loads((copy / "manifest.json").read_text())
    store = Datastore.open(root / "store")
    (copy / "index").mkdir()
    for kind in ("adam", "sgd"):  # what schema 1 wrote: an fp32 Flat index of everything
        vectors = np.concatenate([store.features(kind, c) for c in (1, 2)], axis=1)
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        faiss.write_index(index, str(copy / f"index/{kind}.faiss"))
        raw["files"][f"index/{kind}.faiss"] = {"sha256": sha256_file(copy / f"index/{kind}.faiss")}
    raw["schema_version"] = 1
    raw["files"] = {path: entry["sha256"] for path, entry in raw["files"].items()}
    raw["indexes"] = [{**e, "file": f"index/{e['kind']}.faiss"} for e in raw["indexes"]]
    del raw["projection"]["kind"], raw["config"]["projection"]["kind"]
    (copy / "manifest.json").write_text(json.dumps(raw))
    old = Datastore.open(copy, verify=True)
    assert old.manifest.schema_version == 2 and old.manifest.projection["kind"] == "rademacher"
    assert old.manifest.config.projection.kind == "rademacher"
    assert old.index("adam") is None  # the fp32 copy is ignored: the shards are scanned
    got = run_selection(QueryEngine(old), TARGETS, "less", top_k=8)
    want = run_selection(QueryEngine(store), TARGETS, "less", top_k=8)
    assert [s.id for s in got.selected] == [s.id for s in want.selected]
    raw["schema_version"] = 7
    (copy / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestMismatchError, match=r"schema version 7 .* rebuild"):
        Datastore.open(copy)
