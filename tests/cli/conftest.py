"""Fixtures of the command-line tests: a user's directory with a tiny model, pool and targets."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_run import FLAGS, gradstore
from tiny_assets import save_tiny_llama

from gradstore.examples import write_jsonl
from gradstore.toy.corpus import generate_corpus, generate_targets


@pytest.fixture(scope="session")
def user_files(tmp_path_factory) -> Path:
    """A directory with a tiny model, a pool and targets, as a user would have them."""
    root = tmp_path_factory.mktemp("user")
    save_tiny_llama(root / "model")
    pool = generate_corpus(seed=0, per_family=4)
    write_jsonl(pool, root / "pool.jsonl")
    write_jsonl(generate_targets(seed=1, per_family=1, exclude=pool), root / "targets.jsonl")
    return root


@pytest.fixture(scope="session")
def built_store(user_files) -> Path:
    done = gradstore(
        "build", "--dataset", "pool.jsonl", "--model", "model", "--out", "store", *FLAGS,
        cwd=user_files,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return user_files / "store"
