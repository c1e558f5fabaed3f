"""Coded feature stores (int8…int1): the codes against slow references, and a coded store
built through the CLI, searched block by block and selecting."""

from __future__ import annotations

import json
from unittest.mock import patch

import numpy as np
import pytest
from stores import one_thread
from tiny_assets import save_tiny_llama
from typer.testing import CliRunner

from gradstore.build import build_all
from gradstore.cli import app
from gradstore.examples import load_examples
from gradstore.query import QueryEngine
from gradstore.selection import run_selection
from gradstore.store.codes import CODE_BITS, CodedRows, FeatureCode
from gradstore.store.datastore import Datastore
from gradstore.store.search import BruteForceSearcher, FeatureScanner, make_searcher


def reference_decode(x: np.ndarray, bits: int, block: int) -> np.ndarray:
    """Quantise and dequantise element by element, from the definition (slow)."""
    out = np.empty_like(x, dtype=np.float64)
    half = 2 ** (bits - 1)
    for i in range(x.shape[0]):
        for b in range(0, x.shape[1], block):
            group = x[i, b : b + block].astype(np.float64)
            if bits == 1:
                out[i, b : b + block] = np.where(group >= 0, 1.0, -1.0) * np.abs(group).mean()
                continue
            step = float(np.float32(2 * np.abs(group).max() / 2**bits))
            for j, value in enumerate(group):
                k = min(max(np.floor(value / step), -half), half - 1) if step > 0 else 0
                out[i, b + j] = (k + 0.5) * step
    return out


@pytest.mark.parametrize("dtype", list(CODE_BITS))
@pytest.mark.parametrize("block", [None, 8])
def test_codes_round_trip_within_their_bounds(dtype, block):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 48)).astype(np.float32)
    x[0] = 0.0  # an all-zero row decodes to zeros
    x[1, 5] = 40.0  # a heavy coordinate
    code = FeatureCode.of(dtype, 48, block)
    stored = code.encode(x)
    assert stored.dtype == np.uint8 and stored.shape == (6, code.row_bytes)
    assert code.row_bytes == 4 * (48 // (block or 48)) + 48 * CODE_BITS[dtype] // 8
    decoded = code.decode(stored)
    np.testing.assert_allclose(decoded, reference_decode(x, code.bits, code.block), atol=1e-6)
    assert not decoded[0].any()
    if code.bits > 1:  # absmax: |x − x̂| ≤ max|x| / 2^b within every scale block
        grouped = np.abs(x).reshape(6, -1, code.block).max(axis=2, keepdims=True)
        bound = np.broadcast_to(grouped / 2**code.bits, (6, 48 // code.block, code.block))
        assert (np.abs(x - decoded) <= bound.reshape(6, 48) * (1 + 1e-4)).all()  # float32
    # CodedRows reads exactly the rows asked for, as a float32 array would
    rows = CodedRows(stored, code)
    assert rows.shape == (6, 48) and len(rows) == 6
    np.testing.assert_array_equal(np.asarray(rows), decoded)
    np.testing.assert_array_equal(rows[[4, 1]], decoded[[4, 1]])
    np.testing.assert_array_equal(rows[2:5], decoded[2:5])
    np.testing.assert_array_equal(rows[3], decoded[3])
    np.testing.assert_array_equal(rows.astype(np.float64), decoded.astype(np.float64))


def test_the_packed_layout_is_scales_then_low_bits_first():
    code = FeatureCode.of("int4", 8, None)
    x = np.array([[1.0, -1.0, 0.5, -0.25, 0, 0, 0, 0]], dtype=np.float32)
    stored = code.encode(x)
    step = np.float32(2 * 1.0 / 16)
    assert stored[0, :4].view("<f4")[0] == step
    k = [min(int(np.floor(v / step)), 7) + 8 for v in x[0]]  # 15, 0, 12, 6, 8, 8, 8, 8
    assert stored[0, 4:].tolist() == [k[i] | k[i + 1] << 4 for i in range(0, 8, 2)]
    assert k[:4] == [15, 0, 12, 6]


def test_a_scale_block_must_divide_the_dimension():
    with pytest.raises(ValueError, match="divide"):
        FeatureCode.of("int4", 48, 10)
    from gradstore.config import BuildConfig

    with pytest.raises(ValueError, match="scale_block"):
        BuildConfig(dtype="int4", scale_block=100)


POOL = [
    {"id": f"add-{i}", "prompt": f"{i}+{i + 3}=", "completion": str(2 * i + 3)} for i in range(12)
] + [
    {"id": f"rev-{i}", "prompt": f"rev {w}", "completion": w[::-1]}
    for i, w in enumerate(["abcd", "bcad", "dcab", "fade", "cafe", "bead", "deaf", "face"])
]
TARGETS = load_examples(
    [
        {"id": "t1", "prompt": "3+4=", "completion": "7", "subtask": "add"},
        {"id": "t2", "prompt": "rev abcd", "completion": "dcba", "subtask": "rev"},
    ]
)
BUILD_FLAGS = [
    "--lora-r", "4", "--lora-alpha", "16", "--warmup-fraction", "0.5", "--epochs", "2",
    "--learning-rate", "0.005", "--warmup-batch-size", "4", "--gradient-accumulation", "1",
    "--projection-dim", "64", "--max-seq-len", "32", "--shard-size", "7", "--batch-size", "4",
    "--methods", "less", "--pool-features", "adam",
]  # fmt: skip


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The same tiny pool built as fp16 and as int4 (scale blocks of 16) by ``gradstore
    build``, and as int2 (one scale per row) by the Python API."""
    root = tmp_path_factory.mktemp("coded")
    model = save_tiny_llama(root / "model")
    dataset = root / "pool.jsonl"
    dataset.write_text("".join(json.dumps(r) + "\n" for r in POOL))
    built = {}
    for name, extra in (("float16", []), ("int4", ["--dtype", "int4", "--scale-block", "16"])):
        args = ["build", "--dataset", str(dataset), "--model", str(model)]
        args += ["--out", str(root / name), *BUILD_FLAGS, *extra]
        with one_thread():
            result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        built[name] = root / name
    config = Datastore.open(built["float16"]).manifest.config.model_copy(update={"dtype": "int2"})
    with one_thread():
        build_all(root / "int2", dataset, model, config, progress=False, methods=["less"])
    built["int2"] = root / "int2"
    return built


def test_a_coded_store_records_its_code_and_stores_bytes(stores):
    store = Datastore.open(stores["int4"], verify=True)
    assert store.manifest.dtype == "int4" and store.manifest.config.scale_block == 16
    assert store.manifest.dim == 64
    code = store.feature_code
    assert code == FeatureCode(bits=4, dim=64, block=16)
    shard = store.manifest.shards["ckpt-1/adam"][0]
    raw = np.load(stores["int4"] / shard)
    assert raw.dtype == np.uint8 and raw.shape == (7, 4 * 4 + 32)
    fp16 = Datastore.open(stores["float16"])
    np.testing.assert_array_equal(store.features("adam", 1)[:7], code.decode(raw))
    # the codes are those of the fp16 store's features, up to the bound of the code
    exact = fp16.features("adam", 1)
    bound = np.abs(exact).reshape(len(exact), 4, 16).max(axis=2, keepdims=True) / 16
    error = np.abs(store.features("adam", 1) - exact).reshape(len(exact), 4, 16)
    assert (error <= bound + 2e-3).all()  # + the fp16 rounding of the reference


@pytest.mark.parametrize("name", ["float16", "int4", "int2"])
def test_search_over_a_store_equals_brute_force_over_the_decoded_rows(stores, name):
    """Through the ``Searcher`` protocol: the store's registered searcher against the slow
    reference. Scale blocks are decoded then scored; one scale per row is scored from the
    codes."""
    store = Datastore.open(stores[name])
    searcher = make_searcher(store)
    assert isinstance(searcher, FeatureScanner)
    checkpoints = [c.index for c in store.manifest.checkpoints]
    decoded = np.concatenate([store.features("adam", c) for c in checkpoints], axis=1)
    rng = np.random.default_rng(1)
    queries = rng.standard_normal((3, len(checkpoints), 64)).astype(np.float32)
    expected = BruteForceSearcher(store).scores("adam", queries)
    for block_rows in (1, 5, 128):
        with patch("gradstore.store.search.BLOCK_ROWS", block_rows):
            got = make_searcher(store).scores("adam", queries)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(store.rows("adam", np.array([9, 0, 19])), decoded[[9, 0, 19]])


def test_a_coded_store_selects_as_the_fp16_store_does(stores):
    picks = {}
    for name, path in stores.items():
        if name == "int2":
            continue
        result = run_selection(QueryEngine(Datastore.open(path)), TARGETS, "less", top_k=6)
        picks[name] = result.selected
    assert len(picks["int4"]) == 6
    assert len({s.id for s in picks["int4"]} & {s.id for s in picks["float16"]}) >= 4
    fp16_scores = {s.id: s.score for s in picks["float16"]}
    for s in picks["int4"]:
        if s.id in fp16_scores:
            assert abs(s.score - fp16_scores[s.id]) < 0.1
