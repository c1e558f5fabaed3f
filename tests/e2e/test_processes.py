"""End to end over real HTTP with real processes (uvicorn, workers, SIGKILL).

- embedded mode: ``gradstore serve`` (API + worker, SQLite) builds and answers a select;
  killed mid-build and restarted on the same data directory, it finishes a store equal to
  an uninterrupted one;
- the Compose topology as processes: ``gradstore api`` + two ``gradstore worker`` on
  PostgreSQL; the shared build equals a one-worker build bit for bit; a worker killed in
  the middle of a shard loses only that shard, which another worker redoes after the lease
  expires, and the store equals an uninterrupted build; the same for a worker killed inside
  a unit of DELIFT's kernel while a ready store gains the method.
"""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest
import sqlalchemy as sa
from conftest import TINY_BUILD
from processes import Process, free_port, manifest_files, wait_for_http, wait_ready, wait_until

from gradstore.examples import write_jsonl
from gradstore.migrations import upgrade
from gradstore.toy.corpus import generate_corpus

pytestmark = pytest.mark.slow

FAST_LEASES = {
    "GRADSTORE_LEASE_SECONDS": "3",
    "GRADSTORE_HEARTBEAT_SECONDS": "0.5",
    "GRADSTORE_POLL_SECONDS": "0.1",
    # one torch thread per process: on 2 shared cores, more threads spin against each other
    # (measured: a tiny build 30x slower with the default thread count under load)
    "GRADSTORE_TORCH_THREADS": "1",
}
TARGETS = [{"subtask": "add", "prompt": "Q: 3+4\nA:", "completion": "7"}]
# one example per batch and big shards: a shard takes long enough to be killed inside it
SLOW_SHARDS = TINY_BUILD | {"shard_size": 24, "batch_size": 1}


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pool") / "pool.jsonl"
    write_jsonl(generate_corpus(seed=0, per_family=12), path)
    return path


def upload(client: httpx.Client, pool_file) -> str:
    with open(pool_file, "rb") as handle:
        response = client.post("/v1/datasets", data={"name": "pool"}, files={"file": handle})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def start_build(client, dataset_id, model_dir, build=TINY_BUILD) -> str:
    body = {"dataset_id": dataset_id, "model": {"path": str(model_dir)}} | build
    response = client.post("/v1/datastores", json=body)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def remote_select(base: str, store_id: str, targets: list[dict], tmp_path) -> list[dict]:
    """The CLI's remote path, through the HTTP client, in its own process."""
    target_file = tmp_path / "targets.jsonl"
    target_file.write_text("".join(json.dumps(t) + "\n" for t in targets))
    command = ["remote", "select", "--server", base, "--datastore", store_id]
    command += ["--targets", str(target_file), "--top-k", "3"]
    output = subprocess.run(
        [sys.executable, "-m", "gradstore.cli", *command], capture_output=True, check=True
    ).stdout
    return json.loads(output)["selected"]


def running_unit(engine, store_id: str, kind: str):
    """A predicate: is a unit of this kind of the store running?"""

    def running():
        with engine.connect() as connection:
            return connection.execute(
                sa.text(
                    "SELECT id FROM work_units WHERE datastore_id = :id "
                    "AND kind = :kind AND state = 'running'"
                ),
                {"id": store_id, "kind": kind},
            ).first()

    return running


def add_methods(client: httpx.Client, store_id: str, methods: list[str]) -> None:
    response = client.post(f"/v1/datastores/{store_id}/methods", json={"methods": methods})
    assert response.status_code == 202, response.text


def wait_methods(client: httpx.Client, store_id: str, timeout: float = 180) -> dict:
    """The store once no method is pending (and it is still ready)."""

    def gained():
        body = client.get(f"/v1/datastores/{store_id}").json()
        assert body["status"] == "ready", body
        return body if not body["pending_methods"] else None

    return wait_until(gained, timeout, 0.2, f"datastore {store_id} to gain its methods")


def test_embedded_serve_builds_selects_and_survives_a_kill(tmp_path, pool_file, tiny_model_dir):
    port, data = free_port(), tmp_path / "data"
    # a long lease: the restarted server frees its dead worker's lease itself, at once
    env = FAST_LEASES | {"GRADSTORE_DATA_DIR": str(data), "GRADSTORE_LEASE_SECONDS": "600"}
    args = ["serve", "--port", str(port), "--data-dir", str(data)]
    base = f"http://127.0.0.1:{port}"
    serve = Process(args, env, tmp_path / "serve.log")
    try:
        wait_for_http(base, serve)
        with httpx.Client(base_url=base, timeout=60) as client:
            dataset = upload(client, pool_file)
            first = start_build(client, dataset, tiny_model_dir, SLOW_SHARDS)
            store = wait_ready(client, first)
            assert store["num_examples"] == 96 and store["progress"]["done"] == 192
            targets = [{"subtask": "add", "prompt": "Q: 3+4\nA:", "completion": "7"}]
            answer = client.post(
                f"/v1/datastores/{first}/select", json={"targets": targets, "fraction": 0.05}
            )
            assert answer.status_code == 200, answer.text
            assert len(answer.json()["selected"]) == 5
            remote = remote_select(base, first, targets, tmp_path)
            expected = answer.json()["selected"][:3]
            assert [s["id"] for s in remote] == [s["id"] for s in expected]
            assert [s["score"] for s in remote] == pytest.approx([s["score"] for s in expected])

            second = start_build(client, dataset, tiny_model_dir, SLOW_SHARDS)
            database = sa.create_engine(f"sqlite:///{data / 'gradstore.db'}")

            running_shard = running_unit(database, second, "featurize")
            wait_until(running_shard, 120, 0.02, "a featurize shard of the second build")
            database.dispose()
        serve.kill()  # the server and its worker, in the middle of that shard
        restarted_log = tmp_path / "serve-restarted.log"
        serve = Process(args, env, restarted_log)
        wait_for_http(base, serve)
        assert "released 1 unit(s)" in restarted_log.read_text()
        with httpx.Client(base_url=base, timeout=60) as client:
            wait_ready(client, second)
        stores = data / "datastores"
        assert manifest_files(stores / second) == manifest_files(stores / first)
    finally:
        serve.stop()


def test_compose_topology_on_postgres(tmp_path, pool_file, tiny_model_dir, postgres_url):
    upgrade(postgres_url)
    port, data = free_port(), tmp_path / "data"
    env = FAST_LEASES | {"GRADSTORE_DATA_DIR": str(data), "GRADSTORE_DATABASE_URL": postgres_url}
    base = f"http://127.0.0.1:{port}"
    api = Process(["api", "--port", str(port)], env, tmp_path / "api.log")
    workers = [Process(["worker"], env, tmp_path / f"worker-{i}.log") for i in range(2)]
    engine = sa.create_engine(postgres_url)
    try:
        wait_for_http(base, api)
        with httpx.Client(base_url=base, timeout=60) as client:
            dataset = upload(client, pool_file)
            shared = start_build(client, dataset, tiny_model_dir, SLOW_SHARDS)
            wait_ready(client, shared)
            with engine.connect() as connection:
                owners = (
                    connection.execute(
                        sa.text(
                            "SELECT DISTINCT lease_owner FROM work_units "
                            "WHERE datastore_id = :id AND kind = 'featurize'"
                        ),
                        {"id": shared},
                    )
                    .scalars()
                    .all()
                )
            assert len(owners) == 2, owners  # both workers took shards of the same build

            workers.pop().stop()
            alone = start_build(client, dataset, tiny_model_dir, SLOW_SHARDS)
            wait_ready(client, alone)
            stores = data / "datastores"
            assert manifest_files(stores / alone) == manifest_files(stores / shared)

            victim = workers.pop()
            killed = start_build(client, dataset, tiny_model_dir, SLOW_SHARDS)

            running_shard = running_unit(engine, killed, "featurize")
            wait_until(running_shard, 120, 0.02, "a featurize shard to be running")
            victim.kill()  # in the middle of that shard
            workers.append(Process(["worker"], env, tmp_path / "worker-late.log"))
            wait_ready(client, killed)
            with engine.connect() as connection:
                attempts = connection.execute(
                    sa.text("SELECT max(attempts) FROM work_units WHERE datastore_id = :id"),
                    {"id": killed},
                ).scalar()
            assert attempts == 2  # the killed shard was leased twice, nothing else
            assert manifest_files(stores / killed) == manifest_files(stores / shared)

            # DELIFT's kernel added to two ready stores, one of them with its worker killed
            # inside a kernel unit: the same bytes either way
            add_methods(client, alone, ["delift"])
            wait_methods(client, alone)
            add_methods(client, killed, ["delift"])
            running = running_unit(engine, killed, "artifact")
            wait_until(running, 120, 0.02, "a kernel unit to be running")
            workers.pop().kill()  # in the middle of that unit
            workers.append(Process(["worker"], env, tmp_path / "worker-last.log"))
            assert wait_methods(client, killed)["methods"] == ["bm25", "delift", "dsir", "less",
                                                              "random", "rds"]  # fmt: skip
            kernel = {k: v for k, v in manifest_files(stores / killed).items() if "delift" in k}
            assert kernel and kernel == {
                k: v for k, v in manifest_files(stores / alone).items() if "delift" in k
            }
            with engine.connect() as connection:
                attempts = connection.execute(
                    sa.text(
                        "SELECT max(attempts) FROM work_units WHERE datastore_id = :id "
                        "AND kind = 'artifact'"
                    ),
                    {"id": killed},
                ).scalar()
            assert attempts == 2  # the killed unit was leased again
            picked = client.post(
                f"/v1/datastores/{killed}/select",
                json={"targets": TARGETS, "top_k": 3, "method": "delift"},
            )
            assert picked.status_code == 200, picked.text
    finally:
        for process in [api, *workers]:
            process.stop()
        engine.dispose()
