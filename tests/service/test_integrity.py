"""A changed file can never produce a ranking: it marks the store failed and answers 409.

One tiny store is built once; each test starts from its pristine bytes (copied back into
place, then verified by a worker as an operator's restore would be).
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import ExitStack
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch
from api_fixtures import assert_problem
from conftest import TINY_BUILD
from fastapi.testclient import TestClient

from gradstore.db.engine import make_engine, make_sessionmaker, transaction
from gradstore.db.integrity import fingerprint
from gradstore.db.models import Datastore
from gradstore.db.queue import queue_verification
from gradstore.db.settings import Settings
from gradstore.migrations import upgrade
from gradstore.service.app import create_app
from gradstore.store.datastore import Datastore as Store
from gradstore.store.search import FeatureScanner
from gradstore.worker.runner import Worker

TARGETS = [{"subtask": "add", "prompt": "Q: 3+4\nA:", "completion": "7"}]


class Deployment:
    """A data directory with one ready store, its pristine copy, and ways to poke at it."""

    def __init__(self, base: Path, pool_file: Path, tiny_model_dir: Path):
        self.models = base / "models"
        shutil.copytree(tiny_model_dir, self.models / "tiny")
        self.settings = Settings(
            data_dir=base / "data", heartbeat_seconds=0.2, model_roots=str(self.models)
        )
        self.settings.data_dir.mkdir(parents=True)
        upgrade(self.settings.database_url)
        self.factory = make_sessionmaker(make_engine(self.settings.database_url))
        with self.client() as client:
            with open(pool_file, "rb") as handle:
                dataset = client.post("/v1/datasets", data={"name": "p"}, files={"file": handle})
            self.dataset = dataset.json()
            body = {"dataset_id": self.dataset["id"], "model": {"path": str(self.models / "tiny")}}
            self.store_id = client.post("/v1/datastores", json=body | TINY_BUILD).json()["id"]
            Worker(self.settings).run(once=True)
            record = client.get(f"/v1/datastores/{self.store_id}").json()
            assert record["status"] == "ready" and record["verified_at"], record
            self.baseline = self.ranking(client)
        self.root = self.settings.datastores_dir / self.store_id
        self.pristine = base / "pristine"
        shutil.copytree(self.root, self.pristine / "store")
        shutil.copytree(self.models / "tiny", self.pristine / "model")

    def client(self) -> TestClient:
        """A fresh API process, as far as the cache of loaded stores goes."""
        return TestClient(create_app(self.settings), raise_server_exceptions=False)

    def select(self, client):
        return client.post(
            f"/v1/datastores/{self.store_id}/select", json={"targets": TARGETS, "top_k": 10}
        )

    def ranking(self, client) -> list[tuple[str, float]]:
        answer = self.select(client)
        assert answer.status_code == 200, answer.text
        return [(s["id"], s["score"]) for s in answer.json()["selected"]]

    def feature_file(self) -> Path:
        shards = json.loads((self.root / "manifest.json").read_text())["shards"]
        return self.root / sorted(shards.values())[0][0]

    def verify(self) -> dict:
        with transaction(self.factory) as session:
            queue_verification(session, self.store_id, 3)
        Worker(self.settings).run(once=True)
        with self.client() as client:
            return client.get(f"/v1/datastores/{self.store_id}").json()

    def restore(self) -> None:
        """Pristine bytes back in place and verified again: ready, as after the build."""
        shutil.rmtree(self.root)
        shutil.copytree(self.pristine / "store", self.root)
        shutil.rmtree(self.models / "tiny")
        shutil.copytree(self.pristine / "model", self.models / "tiny")
        assert self.verify()["status"] == "ready"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, toy_pool_file, tiny_model_dir):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Deployment(tmp_path_factory.mktemp("integrity"), toy_pool_file, tiny_model_dir)
    torch.set_num_threads(threads)


@pytest.fixture
def store(deployment):
    deployment.restore()
    return deployment


def flip_bytes(path: Path, keep_times: bool = False) -> None:
    """Change bytes in place, same size (and, if asked, the old modification time)."""
    before = path.stat()
    with open(path, "r+b") as handle:
        handle.seek(before.st_size - 64)
        data = handle.read(64)
        handle.seek(before.st_size - 64)
        handle.write(bytes(b ^ 0x55 for b in data))
    if keep_times:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def replace_by_rename(path: Path) -> None:
    copy = path.with_name(path.name + ".new")
    shutil.copyfile(path, copy)
    flip_bytes(copy)
    os.replace(copy, path)


MUTATIONS = {
    "overwrite in place": lambda s: flip_bytes(s.feature_file()),
    "overwrite, old mtime put back": lambda s: flip_bytes(s.feature_file(), keep_times=True),
    "replaced by rename": lambda s: replace_by_rename(s.feature_file()),
    "truncated": lambda s: os.truncate(s.feature_file(), 128),
    "deleted": lambda s: s.feature_file().unlink(),
    "manifest rewritten": lambda s: (s.root / "manifest.json").write_text(
        (s.root / "manifest.json").read_text()
    ),
    "manifest deleted": lambda s: (s.root / "manifest.json").unlink(),
    "adapter overwritten": lambda s: flip_bytes(
        next((s.root / "checkpoints").rglob("adapter_model.safetensors")), keep_times=True
    ),
    "model weights overwritten": lambda s: flip_bytes(s.models / "tiny" / "model.safetensors"),
}


@pytest.mark.parametrize("loaded", [True, False], ids=["engine loaded", "after a restart"])
@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_a_changed_file_never_ranks(store, mutation, loaded):
    with ExitStack() as stack:
        client = stack.enter_context(store.client())
        if loaded:
            assert store.ranking(client) == store.baseline  # the engine is now cached
        MUTATIONS[mutation](store)
        if not loaded:
            client = stack.enter_context(store.client())  # a new process: nothing cached
        failures = _integrity_failures(client)
        body = assert_problem(store.select(client), 409, "integrity", "datastore-integrity")
        assert str(store.settings.data_dir) not in body["detail"]  # no host paths
        record = client.get(f"/v1/datastores/{store.store_id}").json()
        assert record["status"] == "failed" and record["error"].startswith("integrity check failed")
        assert_problem(store.select(client), 409, "integrity check failed", "datastore-not-ready")
        assert _integrity_failures(client) == failures + 1


def _integrity_failures(client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("gradstore_datastore_integrity_failures_total "):
            return float(line.split()[1])
    raise AssertionError("no integrity counter")


def test_restored_files_make_the_store_ready_with_the_same_ranking(store):
    flip_bytes(store.feature_file())
    with store.client() as client:
        assert_problem(store.select(client), 409, "integrity")
    assert store.verify()["status"] == "failed"  # still the damaged bytes
    record = store.verify()
    assert record["error"].startswith("integrity check failed") and "checksum" in record["error"]
    store.restore()
    with store.client() as client:
        assert store.ranking(client) == store.baseline


def test_a_change_during_the_search_returns_no_ranking(store, monkeypatch):
    original = FeatureScanner.scores

    def scores_while_a_file_changes(self, kind, queries):
        result = original(self, kind, queries)
        flip_bytes(store.feature_file(), keep_times=True)  # after the pre-search stat check
        return result

    with store.client() as client:
        assert store.ranking(client) == store.baseline
        monkeypatch.setattr(FeatureScanner, "scores", scores_while_a_file_changes)
        assert_problem(store.select(client), 409, "changed on disk", "datastore-integrity")


def test_verification_in_the_background(store):
    """An unverified store is not served (503); the periodic check finds silent damage."""
    with transaction(store.factory) as session:
        session.execute(sa.update(Datastore).values(verified_fingerprint=None, verified_at=None))
    with store.client() as client:
        answer = store.select(client)
        assert_problem(answer, 503, "awaits its first full verification", "service-unavailable")
        assert answer.headers["retry-after"] == str(store.settings.retry_after_seconds)
        Worker(store.settings).run(once=True)  # idle: schedules the verification, runs it
        assert store.ranking(client) == store.baseline

        queued = client.post(f"/v1/datastores/{store.store_id}/verify")
        assert queued.status_code == 202 and queued.json()["verifying"] is True
        assert client.get(f"/v1/datastores/{store.store_id}").json()["verifying"] is True
        assert client.post(f"/v1/datastores/{store.store_id}/verify").status_code == 202  # once
        Worker(store.settings).run(once=True)
        record = client.get(f"/v1/datastores/{store.store_id}").json()
        assert record["status"] == "ready" and record["verifying"] is False

        # bit rot a stat cannot see: the bytes change, the fingerprint is re-recorded as if
        # by an operator who touched the file and trusted it; the full read still finds it
        flip_bytes(store.feature_file())
        with transaction(store.factory) as session:
            session.execute(
                sa.update(Datastore).values(
                    verified_fingerprint=fingerprint(Store.open(store.root))
                )
            )
        settings = store.settings.model_copy(update={"verify_interval_seconds": 1e-6})
        Worker(settings).run(once=True)
        record = client.get(f"/v1/datastores/{store.store_id}").json()
        assert record["status"] == "failed" and "checksum" in record["error"], record
        assert_problem(store.select(client), 409, "checksum", "datastore-not-ready")
        assert_problem(client.post(f"/v1/datastores/{'0' * 32}/verify"), 404)


def test_dataset_files_are_checked_on_read(store):
    with store.client() as client:
        path = store.settings.datasets_dir / f"{store.dataset['sha256']}.jsonl"
        example = f"/v1/datasets/{store.dataset['id']}/examples/add-00000"
        assert client.get(example).status_code == 200
        original = path.read_bytes()
        try:
            path.write_bytes(original.replace(b"add", b"sub", 1))
            assert_problem(client.get(example), 409, "no longer matches", "dataset-integrity")
            body = {
                "dataset_id": store.dataset["id"],
                "model": {"path": str(store.models / "tiny")},
            }
            store_id = client.post("/v1/datastores", json=body | TINY_BUILD).json()["id"]
            Worker(store.settings).run(once=True)
            failed = client.get(f"/v1/datastores/{store_id}").json()
            assert failed["status"] == "failed" and "sha256 recorded at upload" in failed["error"]
            path.unlink()
            assert_problem(client.get(example), 409, "missing", "dataset-integrity")
        finally:
            path.write_bytes(original)
        assert client.get(example).status_code == 200
