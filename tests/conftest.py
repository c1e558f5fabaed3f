"""Shared fixtures: toy corpus and tiny models on disk, and the PostgreSQL URL when CI has one."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cli_run import FLAGS, gradstore
from stores import CONTRACT_BUILD, TINY_BUILD, build_store, contract_pool  # noqa: F401 (TINY_BUILD re-exported)
from tiny_assets import save_tiny_llama

from gradstore.examples import Example, write_jsonl
from gradstore.toy.corpus import generate_corpus, generate_targets
from gradstore.toy.model import train_toy_model

POSTGRES_HINT = (
    "set GRADSTORE_TEST_DATABASE_URL (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test) "
    "to run the PostgreSQL tests"
)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def toy_pool_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pool") / "pool.jsonl"
    write_jsonl(generate_corpus(seed=0, per_family=6), path)
    return path


@pytest.fixture(scope="session")
def toy_corpus() -> list[Example]:
    """12 examples of each toy family (96 in all)."""
    return generate_corpus(seed=0, per_family=12)


@pytest.fixture(scope="session")
def toy_corpus_file(tmp_path_factory, toy_corpus) -> Path:
    path = tmp_path_factory.mktemp("toy-corpus") / "corpus.jsonl"
    write_jsonl(toy_corpus, path)
    return path


@pytest.fixture(scope="session")
def toy_model_dir(tmp_path_factory, toy_corpus) -> Path:
    """A "tiny" toy model (own tokenizer) pre-trained for a few steps on ``toy_corpus``."""
    out = tmp_path_factory.mktemp("toy-model") / "model"
    return train_toy_model(toy_corpus, out, seed=0, size="tiny", steps=20, progress=False)


@pytest.fixture
def postgres_url() -> str:
    """A fresh, empty schema in the CI PostgreSQL database, dropped afterwards."""
    base = os.environ.get("GRADSTORE_TEST_DATABASE_URL")
    if not base:
        pytest.skip(POSTGRES_HINT)
    import sqlalchemy as sa

    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(base)
    with engine.begin() as connection:
        connection.execute(sa.text(f"CREATE SCHEMA {schema}"))
    separator = "&" if "?" in base else "?"
    yield f"{base}{separator}options=-csearch_path%3D{schema}"
    with engine.begin() as connection:
        connection.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    engine.dispose()


@pytest.fixture(scope="session")
def contract_store(tmp_path_factory, tiny_model_dir) -> Path:
    """Every registered method's artifacts, over 34 toy examples with one duplicated pair."""
    from gradstore.selection import METHODS

    root = tmp_path_factory.mktemp("contract")
    return build_store(root, tiny_model_dir, contract_pool(), CONTRACT_BUILD, sorted(METHODS))


@pytest.fixture(scope="session")
def less_only_store(tmp_path_factory, tiny_model_dir) -> Path:
    """A store built for LESS alone: gradient features, no other artifact."""
    root = tmp_path_factory.mktemp("less-only")
    config = CONTRACT_BUILD.model_copy(update={"batch_size": 4})
    return build_store(root, tiny_model_dir, contract_pool(), config, methods=["less"])


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
    """A tiny store built there by `gradstore build`, as the command-line tests use it."""
    done = gradstore(
        "build", "--dataset", "pool.jsonl", "--model", "model", "--out", "store", *FLAGS,
        cwd=user_files,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return user_files / "store"


def pytest_collection_modifyitems(config, items) -> None:
    """GPU tests run only where CUDA is present (never in CI, which has no GPU)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run with `pytest -m gpu` on a GPU host)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
