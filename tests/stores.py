"""Tiny built stores for the selection and artifact tests, and ways to damage copies."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from gradstore.build import build_all
from gradstore.config import BuildConfig
from gradstore.examples import write_jsonl
from gradstore.toy.corpus import generate_corpus

# Small enough that a whole build takes seconds on 2 cores.
TINY_BUILD = {
    "lora": {"r": 4, "alpha": 16, "dropout": 0.0},
    "warmup": {
        "fraction": 0.5,
        "epochs": 2,
        "learning_rate": 0.005,
        "batch_size": 4,
        "gradient_accumulation": 1,
    },
    "projection": {"dim": 256, "seed": 0},
    "max_seq_len": 64,
    "shard_size": 12,
    "batch_size": 4,
}

# batch_size 1: every example is computed alone, so identical examples get identical bytes
# in every artifact (the contract's tie test relies on it)
CONTRACT_BUILD = BuildConfig(**(TINY_BUILD | {"shard_size": 10, "batch_size": 1}))
DUPLICATES = ("dup-first", "dup-second")


def contract_pool() -> list:
    pool = generate_corpus(seed=0, per_family=4)
    twin = pool[5].model_copy(update={"id": DUPLICATES[0]})
    pool.insert(7, twin)
    pool.insert(20, twin.model_copy(update={"id": DUPLICATES[1]}))
    return pool


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread, as the stores here are built: a float sum may group by the thread
    count, so a rerun compared byte for byte with a build must run as the build did."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def build_store(root: Path, model_dir: Path, pool: list, config: BuildConfig, methods=None) -> Path:
    with one_thread():
        write_jsonl(pool, root / "pool.jsonl")
        build_all(
            root / "store", root / "pool.jsonl", model_dir, config, progress=False, methods=methods
        )
    return root / "store"


def copy_store(store: Path, destination: Path) -> Path:
    shutil.copytree(store, destination, ignore=shutil.ignore_patterns(".manifest.lock"))
    return destination


def drop_artifact(store: Path, name: str) -> None:
    """Rewrite a store's manifest as if it had never had artifact ``name``."""
    raw = json.loads((store / "manifest.json").read_text())
    entry = raw["artifacts"].pop(name)
    for relative in entry["files"]:
        raw["files"].pop(relative, None)
    if name.startswith("gradients."):
        kind = name.split(".", 1)[1]
        raw["kinds"].remove(kind)
        raw["shards"] = {k: v for k, v in raw["shards"].items() if not k.endswith(f"/{kind}")}
        raw["indexes"] = [e for e in raw["indexes"] if e["kind"] != kind]
    (store / "manifest.json").write_text(json.dumps(raw))
