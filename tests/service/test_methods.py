"""Stores serve the methods they were built for and gain more later, over HTTP."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_BUILD
from fastapi.testclient import TestClient
from sqlalchemy import select
from test_api import assert_problem, upload

from gradstore.db.engine import make_engine, make_sessionmaker
from gradstore.db.models import WorkUnit
from gradstore.db.settings import Settings
from gradstore.migrations import upgrade
from gradstore.service.app import create_app
from gradstore.store.datastore import Datastore
from gradstore.worker import units as unit_types
from gradstore.worker.runner import Worker


@pytest.fixture
def settings(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", heartbeat_seconds=0.2)
    settings.data_dir.mkdir(parents=True)
    upgrade(settings.database_url)
    return settings


@pytest.fixture
def client(settings):
    torch.set_num_threads(1)  # builds run in this process: on 2 shared cores more contend
    with TestClient(create_app(settings)) as client:
        yield client


TARGETS = [
    {"subtask": "add", "prompt": "Q: 3+4\nA:", "completion": "7"},
    {"subtask": "add", "prompt": "Q: 10+21\nA:", "completion": "31"},
]


def test_methods_are_listed_with_their_needs(client):
    methods = {m["name"]: m for m in client.get("/v1/methods").json()["data"]}
    assert {"less", "rds", "dsir", "bm25", "random"} <= set(methods)
    assert methods["less"]["model"] == "checkpoints" and methods["bm25"]["model"] == "none"
    assert methods["rds"]["artifacts"] == ["hidden_states"]
    assert "aggregate" in methods["less"]["options"]["properties"]


def test_a_store_gains_a_method_without_recomputing_anything(
    client, settings, toy_pool_file, tiny_model_dir
):
    dataset = upload(client, toy_pool_file)
    body = {
        "dataset_id": dataset["id"],
        "model": {"path": str(tiny_model_dir)},
        "methods": ["less", "bm25", "less"],
    } | TINY_BUILD
    bad = client.post("/v1/datastores", json=body | {"methods": ["less", "nope"]})
    assert_problem(bad, 422, "unknown selection method 'nope'")
    created = client.post("/v1/datastores", json=body)
    assert created.status_code == 202, created.text
    store_id = created.json()["id"]
    assert created.json()["config"]["methods"] == ["less", "bm25"]
    methods_url = f"/v1/datastores/{store_id}/methods"
    assert_problem(client.post(methods_url, json={"methods": ["rds"]}), 409, "once ready")

    Worker(settings).run(once=True)
    store = client.get(f"/v1/datastores/{store_id}").json()
    assert store["status"] == "ready" and store["methods"] == ["less", "bm25"]
    select = f"/v1/datastores/{store_id}/select"
    missing = client.post(select, json={"targets": TARGETS, "top_k": 4, "method": "rds"})
    assert_problem(missing, 409, "hidden_states")
    assert f"POST /v1/datastores/{store_id}/methods" in missing.json()["detail"]
    root = Datastore.open(store_path(settings, store_id))
    before = {path: entry.sha256 for path, entry in root.manifest.files.items()}

    added = client.post(methods_url, json={"methods": ["rds", "dsir"]})
    assert added.status_code == 202, added.text
    assert added.json()["pending_methods"] == ["dsir", "rds"]
    assert added.json()["status"] == "ready"
    less = client.post(select, json={"targets": TARGETS, "top_k": 4})
    assert less.status_code == 200  # the methods it had answer while the others are added

    Worker(settings).run(once=True)
    store = client.get(f"/v1/datastores/{store_id}").json()
    assert store["methods"] == ["bm25", "dsir", "less", "rds"] and store["pending_methods"] == []
    for method in ("rds", "dsir"):
        answer = client.post(select, json={"targets": TARGETS, "top_k": 4, "method": method})
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["selected"]) == 4
    after = Datastore.open(store_path(settings, store_id)).manifest.files
    assert all(after[path].sha256 == digest for path, digest in before.items())
    again = client.post(methods_url, json={"methods": ["rds"]})
    assert again.status_code == 200 and again.json()["pending_methods"] == []


def store_path(config: Settings, store_id: str):
    return config.datastores_dir / store_id


def test_weights_explanations_and_the_report_over_http(
    client, settings, toy_pool_file, tiny_model_dir
):
    dataset = upload(client, toy_pool_file)
    body = {
        "dataset_id": dataset["id"],
        "model": {"path": str(tiny_model_dir)},
        "methods": ["less", "bm25", "influence_distillation", "in2core"],
    } | TINY_BUILD
    store_id = client.post("/v1/datastores", json=body).json()["id"]
    Worker(settings).run(once=True)
    select = f"/v1/datastores/{store_id}/select"

    weighted = client.post(
        select, json={"targets": TARGETS, "top_k": 5, "method": "influence_distillation"}
    )
    assert weighted.status_code == 200, weighted.text
    weights = [s["weight"] for s in weighted.json()["selected"]]
    assert all(w is not None and w >= 0 for w in weights) and sum(weights) > 0

    covered = client.post(select, json={"targets": TARGETS, "top_k": 5, "method": "in2core"})
    assert covered.status_code == 200, covered.text
    coverage = covered.json()["coverage"]
    assert [t["target"] for t in coverage["targets"]] == ["target-0", "target-1"]
    assert coverage == covered.json()["details"]["coverage"]

    less = client.post(select, json={"targets": TARGETS, "top_k": 5, "explain": True}).json()
    assert less["coverage"] is None
    assert all(s["weight"] is None for s in less["selected"])
    explained = less["explanation"]
    assert [e["id"] for e in explained["examples"]] == [s["id"] for s in less["selected"]]
    assert {t["subtask"] for t in explained["targets"]} == {"add"}
    assert sum(t["pulled"] for t in explained["targets"]) == 5
    client.post(select, json={"targets": TARGETS, "top_k": 5, "method": "bm25"})

    report = client.get(f"/v1/datastores/{store_id}/selections/{less['selection_id']}/report")
    assert report.status_code == 200, report.text
    assert report.headers["content-type"].startswith("text/html")
    page = report.text
    assert "<img" in page and "bm25" in page  # figures, and the overlap with the other method
    assert less["selected"][0]["id"] in page  # the top examples are listed
    missing = client.get(f"/v1/datastores/{store_id}/selections/nope/report")
    assert_problem(missing, 404, "no selection")


def ready_store(client, settings, toy_pool_file, tiny_model_dir, methods) -> str:
    dataset = upload(client, toy_pool_file)
    body = {"dataset_id": dataset["id"], "model": {"path": str(tiny_model_dir)}}
    created = client.post("/v1/datastores", json=body | {"methods": methods} | TINY_BUILD)
    Worker(settings).run(once=True)
    store = client.get(f"/v1/datastores/{created.json()['id']}").json()
    assert store["status"] == "ready", store
    return store["id"]


def units_of(settings: Settings, store_id: str, kind: str) -> list[WorkUnit]:
    with make_sessionmaker(make_engine(settings.database_url))() as session:
        return list(
            session.scalars(
                select(WorkUnit)
                .where(WorkUnit.datastore_id == store_id, WorkUnit.kind == kind)
                .order_by(WorkUnit.id)
            )
        )


def test_added_artifacts_are_row_units_that_several_workers_share(
    client, settings, toy_pool_file, tiny_model_dir
):
    store_id = ready_store(client, settings, toy_pool_file, tiny_model_dir, ["less"])
    url = f"/v1/datastores/{store_id}"
    assert client.post(f"{url}/methods", json={"methods": ["rds", "dsir"]}).status_code == 202
    first, second = Worker(settings), Worker(settings)
    assert first.run_one()  # the extend unit: checks the store, plans the artifact units
    planned = units_of(settings, store_id, "artifact")
    by_artifact = {name: [u for u in planned if u.artifact == name] for name in
                   ("hidden_states", "ngram_counts")}  # fmt: skip
    assert len(planned) == sum(len(v) for v in by_artifact.values())
    for units in by_artifact.values():  # each tiles the 48 examples
        assert [u.start for u in units] == [0, *(u.end for u in units[:-1])]
        assert units[-1].end == 48 and all(u.state == "pending" for u in units)
    hidden = by_artifact["hidden_states"]  # in units of shard_size (12) rows
    assert [(u.start, u.end) for u in hidden] == [(0, 12), (12, 24), (24, 36), (36, 48)]
    turn = 0
    while any(u.state != "done" for u in units_of(settings, store_id, "artifact")):
        assert client.get(url).json()["pending_methods"] == ["dsir", "rds"]
        assert (second if turn % 2 else first).run_one()
        turn += 1
    owners = {u.lease_owner for u in units_of(settings, store_id, "artifact")}
    assert owners == {first.owner, second.owner}
    assert units_of(settings, store_id, "finish")[0].state == "pending"
    assert client.post(f"{url}/select", json={"targets": TARGETS, "method": "rds",
                                              "top_k": 3}).status_code == 409  # fmt: skip
    assert second.run_one()  # the finish unit: the manifest gains both, fingerprinted
    store = client.get(url).json()
    assert store["methods"] == ["dsir", "less", "rds"] and store["pending_methods"] == []
    answer = client.post(f"{url}/select", json={"targets": TARGETS, "method": "rds", "top_k": 3})
    assert answer.status_code == 200, answer.text


def test_an_artifact_unit_that_keeps_failing_fails_its_extension_not_the_store(
    client, settings, toy_pool_file, tiny_model_dir, monkeypatch
):
    store_id = ready_store(client, settings, toy_pool_file, tiny_model_dir, ["less"])
    url = f"/v1/datastores/{store_id}"
    client.post(f"{url}/methods", json={"methods": ["rds"]})
    real = unit_types.compute_artifact_unit

    def broken_third_unit(root, unit, **kwargs):
        if unit.start == 24:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(root, unit, **kwargs)

    monkeypatch.setattr(unit_types, "compute_artifact_unit", broken_third_unit)
    Worker(settings).run(once=True)
    store = client.get(url).json()
    assert store["status"] == "ready" and store["pending_methods"] == []
    assert store["methods"] == ["less"]
    units = units_of(settings, store_id, "artifact")
    failed = [u for u in units if u.state == "failed"]
    assert failed and all("illegal memory access" in u.error for u in failed)
    assert units_of(settings, store_id, "finish") == []
    less = client.post(f"{url}/select", json={"targets": TARGETS, "top_k": 3})
    assert less.status_code == 200, less.text


def test_a_build_shows_its_artifacts_stage_with_row_progress(
    client, settings, toy_pool_file, tiny_model_dir
):
    dataset = upload(client, toy_pool_file)
    body = {"dataset_id": dataset["id"], "model": {"path": str(tiny_model_dir)}}
    created = client.post("/v1/datastores", json=body | {"methods": ["less", "rds"]} | TINY_BUILD)
    url = f"/v1/datastores/{created.json()['id']}"
    worker = Worker(settings)
    while (store := client.get(url).json())["status"] != "artifacts":
        assert store["status"] in ("queued", "warmup", "featurize", "index"), store
        assert worker.run_one()
    progress = store["progress"]  # RDS+ embeddings of 48 examples, in 4 units
    assert progress["stage"] == "artifacts" and (progress["done"], progress["total"]) == (0, 48)
    assert progress["examples_per_s"] is None  # not featurize's rate
    assert worker.run_one()
    progress = client.get(url).json()["progress"]
    assert progress["done"] == 12 and progress["examples_per_s"] > 0
    worker.run(once=True)
    store = client.get(url).json()
    assert store["status"] == "ready" and store["methods"] == ["less", "rds"]
    assert store["verified_at"] is not None
