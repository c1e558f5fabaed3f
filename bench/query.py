"""Search latency and memory at pool scale, on a synthetic store in the real format.

Writes (once, then reuses) a store of N random unit vectors per checkpoint, 4 checkpoints ×
8,192 dims, fp16 shards (or ``--dtype int8|int4|int2|int1`` coded shards, one scale per row
or per ``--scale-block`` dims) of 1,024 rows with a schema-2 manifest, exactly as a build
leaves them; opens it as the service does (``Datastore.open``: a stat per file) and times the LESS
search for 8 subtasks: one exact scan over the memory-mapped features scoring every
subtask, max over subtasks, top 5%. Target gradients are not part of it (they do not
depend on the pool size; ``bench/query_latency.py`` times a whole query on the toy store).

In the same run, interleaved with the timed searches (in a helper process, so that its
fp32 copies do not count towards the search's peak RSS):
- ``baseline_product_ms``: the linear-scan yardstick, one plain numpy fp32 product of the
  same queries against the first 10,000 rows held in RAM, scaled by n / 10,000;
- ``faiss_flat_ms``: the same 10,000 rows in a FAISS ``IndexFlatIP`` searched for the 8
  queries (k = 5%), scaled likewise: what a FAISS flat index would cost (it also needs an
  fp32 copy of the store in RAM).

    OMP_NUM_THREADS=1 python bench/query.py --quick --json
    python bench/query.py --n 100000 --json
    python bench/query.py --n 1000000 --dtype int2 --json

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import multiprocessing
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from gradstore.build import stored_features
from gradstore.config import BuildConfig, ProjectionConfig
from gradstore.files import atomic_write_json
from gradstore.store.codes import STORE_DTYPES, FeatureCode, is_code
from gradstore.store.datastore import (
    MANIFEST,
    SCHEMA_VERSION,
    CheckpointEntry,
    Datastore,
    FileEntry,
    IndexEntry,
    Manifest,
    ModelInfo,
    utc_now,
)
from gradstore.store.search import FeatureScanner, top_k

CHECKPOINTS, DIM, SUBTASKS, SHARD_ROWS, BASELINE_ROWS = 4, 8192, 8, 1024, 10_000


def write_synthetic_store(
    root: Path,
    n: int,
    seed: int = 0,
    dtype: str = "float16",
    scale_block: int | None = None,
    random_codes: bool = False,
) -> None:
    """N unit vectors per checkpoint in fp16 (or coded) shards, a manifest with sizes and
    sha256. ``random_codes``: uniformly drawn code bytes and the steps of a unit Gaussian
    row instead of encoding random vectors (the same bytes to read and decode; encoding a
    million rows would take longer than the searches)."""
    if (root / MANIFEST).exists():
        manifest = json.loads((root / MANIFEST).read_text())
        same_code = manifest["config"].get("scale_block") == scale_block
        if manifest["num_examples"] == n and manifest["dtype"] == dtype and same_code:
            return
    config = BuildConfig(projection=ProjectionConfig(dim=DIM), dtype=dtype, scale_block=scale_block)  # type: ignore[arg-type]
    rng = np.random.default_rng(seed)
    files: dict[str, FileEntry] = {}
    shards: dict[str, list[str]] = {}
    for checkpoint in range(1, CHECKPOINTS + 1):
        key = f"ckpt-{checkpoint}/adam"
        shards[key] = []
        for start in range(0, n, SHARD_ROWS):
            end = min(start + SHARD_ROWS, n)
            relative = f"features/{key}/{start:09d}-{end:09d}.npy"
            buffer = io.BytesIO()
            np.save(buffer, _synthetic_rows(rng, end - start, config, random_codes))
            data = buffer.getvalue()
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / relative).write_bytes(data)
            files[relative] = FileEntry(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
            shards[key].append(relative)
    ids = json.dumps([f"ex-{i}" for i in range(n)]).encode()
    (root / "ids.json").write_bytes(ids)
    files["ids.json"] = FileEntry(sha256=hashlib.sha256(ids).hexdigest(), size=len(ids))
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        created_at=utc_now(),
        model=ModelInfo(path="synthetic", content_hash="synthetic"),
        template="tulu",
        tokenizer_hash="synthetic",
        config=config,
        dataset_sha256="synthetic",
        num_examples=n,
        num_skipped=0,
        lora_parameters=0,
        dim=DIM,
        dtype=dtype,
        projection=config.projection.model_dump(),
        kinds=["adam"],
        checkpoints=[
            CheckpointEntry(index=c, learning_rate=1e-5, weight=1 / CHECKPOINTS)
            for c in range(1, CHECKPOINTS + 1)
        ],
        shards=shards,
        indexes=[IndexEntry(kind="adam", factory="Flat")],
        files=files,
    )
    atomic_write_json(root / MANIFEST, manifest.model_dump(mode="json"))


def _synthetic_rows(
    rng: np.random.Generator, count: int, config: BuildConfig, random_codes: bool
) -> np.ndarray:
    """One shard's stored rows: random unit vectors as the build stores them."""
    if random_codes and is_code(config.dtype):
        code = FeatureCode.of(config.dtype, DIM, config.scale_block)
        out = rng.integers(0, 256, size=(count, code.row_bytes), dtype=np.uint8)
        # the absmax step of a unit Gaussian row: max |x| ≈ 4.3 / sqrt(d)
        step = np.float32(2 * 4.3 / np.sqrt(DIM) / 2**code.bits)
        out[:, : 4 * code.blocks] = np.full((count, code.blocks), step, "<f4").view(np.uint8)
        return out
    rows = rng.standard_normal((count, DIM), dtype=np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return stored_features(config, rows)


def less_search(scanner: FeatureScanner, queries: np.ndarray, k: int) -> np.ndarray:
    """What the LESS method does after the target gradients: scan, max over subtasks, top-k."""
    scores = scanner.scores("adam", queries)
    return top_k(scores.max(axis=1), k)


def yardsticks(root: Path, queries: np.ndarray, k: int, connection) -> None:
    """Helper process: the fp32 first rows in RAM; times a product and a FAISS flat search
    each time it is asked, answering (product_ms, faiss_ms, rows)."""
    store = Datastore.open(root)
    rows = min(store.num_examples, BASELINE_ROWS)
    in_ram = store.rows("adam", np.arange(rows))  # fp32, as a plain product needs
    flat_queries = np.ascontiguousarray(queries.reshape(len(queries), -1))
    flat = faiss.IndexFlatIP(in_ram.shape[1])
    flat.add(in_ram)
    while connection.recv():
        started = time.perf_counter()
        in_ram @ flat_queries.T
        product_ms = 1000 * (time.perf_counter() - started)
        started = time.perf_counter()
        flat.search(flat_queries, min(k, rows))
        connection.send((product_ms, 1000 * (time.perf_counter() - started), rows))


def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (0 where there is none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=None, help="Pool size (default 100,000).")
    parser.add_argument("--quick", action="store_true", help="n = 12,000 and 5 repeats.")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--store-dir", type=Path, default=None, help="Where to keep the store.")
    parser.add_argument("--device", default="cpu", help="cpu or cuda.")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all).")
    parser.add_argument("--dtype", default="float16", choices=STORE_DTYPES)
    parser.add_argument("--scale-block", type=int, default=None, help="Dims per code scale.")
    parser.add_argument("--no-yardsticks", action="store_true", help="Skip product and FAISS.")
    parser.add_argument(
        "--random-codes", action="store_true", help="Draw code bytes instead of encoding."
    )
    parser.add_argument("--json", action="store_true", help="Print one JSON line.")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.n or (12_000 if args.quick else 100_000)
    repeats = args.repeats or (5 if args.quick else 10)
    name = f"gradstore-bench-query-{n}" + ("" if args.dtype == "float16" else f"-{args.dtype}")
    name += f"-{args.scale_block}" if args.scale_block else ""
    root = args.store_dir or Path(tempfile.gettempdir()) / name

    started = time.perf_counter()
    write_synthetic_store(root, n, 0, args.dtype, args.scale_block, args.random_codes)
    write_s = time.perf_counter() - started
    started = time.perf_counter()
    store = Datastore.open(root)
    open_ms = 1000 * (time.perf_counter() - started)
    scanner = FeatureScanner(store, args.device)
    rng = np.random.default_rng(1)
    queries = rng.standard_normal((SUBTASKS, CHECKPOINTS, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=2, keepdims=True) * CHECKPOINTS
    k = max(1, n // 20)

    context = multiprocessing.get_context("spawn")
    connection, child_end = context.Pipe()
    helper = context.Process(target=yardsticks, args=(root, queries, k, child_end))
    if not args.no_yardsticks:
        helper.start()

    cold_started = time.perf_counter()
    first = less_search(scanner, queries, k)
    cold_ms = 1000 * (time.perf_counter() - cold_started)
    searches, baselines, faiss_runs = [], [], []
    anonymous_mb = _status_mb("RssAnon")
    for _ in range(repeats):
        started = time.perf_counter()
        rows = less_search(scanner, queries, k)
        searches.append(1000 * (time.perf_counter() - started))
        assert np.array_equal(rows, first)
        anonymous_mb = max(anonymous_mb, _status_mb("RssAnon"))
        if args.no_yardsticks:
            continue
        connection.send(True)
        product_ms, faiss_ms, baseline_rows = connection.recv()
        baselines.append(product_ms * n / baseline_rows)
        faiss_runs.append(faiss_ms * n / baseline_rows)
    if not args.no_yardsticks:
        connection.send(False)
        helper.join()

    feature_bytes = sum(
        entry.size or 0 for path, entry in store.manifest.files.items() if path.startswith("feat")
    )
    baseline_ms = statistics.median(baselines) if baselines else None
    result = {
        "benchmark": "query",
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads",
        "device": args.device,
        "n": n,
        "checkpoints": CHECKPOINTS,
        "dim": DIM,
        "subtasks": SUBTASKS,
        "k": k,
        "repeats": repeats,
        "p50_ms": round(percentile(searches, 0.5), 1),
        "p95_ms": round(percentile(searches, 0.95), 1),
        "cold_ms": round(cold_ms, 1),
        "open_ms": round(open_ms, 1),
        "baseline_product_ms": round(baseline_ms, 1) if baseline_ms else None,
        "ratio_to_baseline_p95": (
            round(percentile(searches, 0.95) / baseline_ms, 2) if baseline_ms else None
        ),
        "faiss_flat_ms": round(statistics.median(faiss_runs), 1) if faiss_runs else None,
        "bytes_per_example_per_checkpoint": round(feature_bytes / (n * CHECKPOINTS), 1),
        "feature_bytes_on_disk_mb": round(feature_bytes / 2**20, 1),
        "dtype": args.dtype,
        "scale_block": args.scale_block,
        # RSS counts the mapped store pages read (page cache); the anonymous part is the
        # process's own memory, flat in n
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_anonymous_rss_mb": round(anonymous_mb, 1),
        "store_written_s": round(write_s, 1),
    }
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:>34}  {value}")


if __name__ == "__main__":
    main()
