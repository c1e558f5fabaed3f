"""The cache of loaded datastores: bounded, least recently used out, one load per store."""

from __future__ import annotations

import threading

import pytest
import torch
from conftest import TINY_BUILD

from gradstore.build import build_all
from gradstore.config import BuildConfig
from gradstore.errors import ManifestMismatchError, NotReadyError
from gradstore.service.engines import EngineCache


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory, toy_pool_file, tiny_model_dir):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("engines") / "store"
    build_all(root, toy_pool_file, tiny_model_dir, BuildConfig(**TINY_BUILD), progress=False)
    torch.set_num_threads(threads)
    return root


def test_least_recently_used_engines_are_dropped(store_dir):
    cache = EngineCache(capacity=2)
    a = cache.get("a", str(store_dir))
    b = cache.get("b", str(store_dir))
    assert cache.get("a", str(store_dir)) is a  # a is now the most recent
    cache.get("c", str(store_dir))  # evicts b
    assert cache.get("a", str(store_dir)) is a
    assert cache.get("b", str(store_dir)) is not b
    cache.evict("a")
    assert cache.get("a", str(store_dir)) is not a


def test_concurrent_first_queries_share_one_load(store_dir):
    cache = EngineCache(capacity=2)
    got, barrier = [], threading.Barrier(4)

    def query() -> None:
        barrier.wait()
        got.append(cache.get("same", str(store_dir)))

    threads = [threading.Thread(target=query) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == 4 and all(engine is got[0] for engine in got)


def test_a_store_that_fails_its_checks_is_not_cached(store_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    cache = EngineCache(capacity=2)
    with pytest.raises((NotReadyError, ManifestMismatchError)):
        cache.get("x", str(broken))
    assert cache.get("y", str(store_dir)) is not None
