"""A store for methods that read the text alone (bm25, dsir, random) builds without a model:
no warmup, no featurize, no model directory; through the CLI and through the API."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from test_api import assert_problem, upload

from gradstore.cli import app, spread_multi_value_flags
from gradstore.db.settings import Settings
from gradstore.migrations import upgrade
from gradstore.selection.needs import (
    methods_needing_a_model,
    methods_needing_the_warmup,
    needs_warmup,
)
from gradstore.service.app import create_app
from gradstore.store.datastore import Datastore
from gradstore.worker.runner import Worker

TEXT_METHODS = ["bm25", "dsir", "random"]
TARGETS = [
    {"subtask": "add", "prompt": "Q: 3+4\nA:", "completion": "7"},
    {"subtask": "add", "prompt": "Q: 10+21\nA:", "completion": "31"},
]


def test_which_methods_pull_in_the_warmup_and_the_model():
    assert not needs_warmup(TEXT_METHODS) and methods_needing_a_model(TEXT_METHODS) == []
    assert needs_warmup(["bm25", "less"]) and not needs_warmup(["rds", "dsir"])
    everything = ["less", "rds", "in2core", "influence_distillation", "delift", *TEXT_METHODS]
    assert methods_needing_the_warmup(everything) == everything[:1] + everything[2:5]
    assert methods_needing_a_model(["bm25", "rds", "less"]) == ["rds", "less"]


def run_cli(*args: str):
    from typer.testing import CliRunner

    return CliRunner().invoke(app, spread_multi_value_flags(list(args)))


def test_the_cli_builds_a_text_store_without_a_model_and_selects(toy_pool_file, tmp_path):
    store = tmp_path / "store"
    built = run_cli(
        "build", "--dataset", str(toy_pool_file), "--out", str(store),
        "--methods", *TEXT_METHODS,
    )  # fmt: skip
    assert built.exit_code == 0, built.output
    manifest = Datastore.open(store, verify=True).manifest
    assert manifest.model is None and manifest.checkpoints == [] and manifest.kinds == []
    assert "ngram_counts" in manifest.artifacts
    assert not (store / "checkpoints").exists() and not (store / "tokens").exists()
    assert manifest.num_examples == sum(1 for _ in toy_pool_file.open())
    targets = tmp_path / "targets.jsonl"
    targets.write_text(
        "".join(json.dumps(t | {"id": f"t{i}"}) + "\n" for i, t in enumerate(TARGETS))
    )
    for method in TEXT_METHODS:
        chosen = run_cli(
            "select", "--store", str(store), "--targets", str(targets), "--top-k", "5",
            "--method", method, "--json",
        )  # fmt: skip
        assert chosen.exit_code == 0, chosen.output
        assert len(json.loads(chosen.stdout)["selected"]) == 5, chosen.output
    less = run_cli(
        "select", "--store", str(store), "--targets", str(targets), "--top-k", "5",
        "--method", "less",
    )  # fmt: skip
    assert less.exit_code != 0
    assert "built without a model" in str(less.exception or "") + less.output


def test_the_cli_refuses_a_build_without_a_model_for_methods_that_need_one(toy_pool_file, tmp_path):
    refused = run_cli(
        "build", "--dataset", str(toy_pool_file), "--out", str(tmp_path / "s"),
        "--methods", "bm25", "rds",
    )  # fmt: skip
    assert refused.exit_code != 0
    assert "a model is needed: rds" in str(refused.exception or "") + refused.output


@pytest.fixture
def settings(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", heartbeat_seconds=0.2)
    settings.data_dir.mkdir(parents=True)
    upgrade(settings.database_url)
    return settings


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings)) as client:
        yield client


def test_the_api_builds_a_text_store_without_a_model(client, settings, toy_pool_file):
    dataset = upload(client, toy_pool_file)
    body = {"dataset_id": dataset["id"]}
    assert_problem(client.post("/v1/datastores", json=body), 422, "a model is needed")
    assert_problem(
        client.post("/v1/datastores", json=body | {"methods": ["bm25", "rds"]}),
        422,
        "a model is needed: rds",
    )
    created = client.post("/v1/datastores", json=body | {"methods": TEXT_METHODS})
    assert created.status_code == 202, created.text
    Worker(settings).run(once=True)
    url = f"/v1/datastores/{created.json()['id']}"
    store = client.get(url).json()
    assert store["status"] == "ready", store
    assert store["methods"] == TEXT_METHODS and store["checkpoints"] == []
    assert store["dim"] is None and store["verified_at"] is not None
    for method in TEXT_METHODS:
        answer = client.post(f"{url}/select", json={"targets": TARGETS, "method": method,
                                                   "top_k": 5})  # fmt: skip
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["selected"]) == 5
    for method in ("less", "rds"):
        refused = client.post(f"{url}/select", json={"targets": TARGETS, "method": method,
                                                    "top_k": 5})  # fmt: skip
        assert_problem(refused, 409, "built without a model")
        assert "new datastore" in refused.json()["detail"]
    added = client.post(f"{url}/methods", json={"methods": ["rds"]})
    assert_problem(added, 409, "built without a model")
    assert "create a new datastore with model.path" in added.json()["detail"]
    verified = client.post(f"{url}/verify")
    assert verified.status_code == 202
    Worker(settings).run(once=True)
    assert client.get(url).json()["status"] == "ready"


def test_an_rds_store_skips_the_warmup_and_cannot_gain_methods_that_need_it(
    client, settings, toy_pool_file, tiny_model_dir
):
    from conftest import TINY_BUILD

    dataset = upload(client, toy_pool_file)
    body = {"dataset_id": dataset["id"], "model": {"path": str(tiny_model_dir)}}
    created = client.post("/v1/datastores", json=body | {"methods": ["rds", "bm25"]} | TINY_BUILD)
    assert created.status_code == 202, created.text
    Worker(settings).run(once=True)
    url = f"/v1/datastores/{created.json()['id']}"
    store = client.get(url).json()
    assert store["status"] == "ready" and store["checkpoints"] == [], store
    answer = client.post(f"{url}/select", json={"targets": TARGETS, "method": "rds", "top_k": 5})
    assert answer.status_code == 200, answer.text
    for method in ("less", "in2core"):
        refused = client.post(f"{url}/methods", json={"methods": [method]})
        assert_problem(refused, 409, "built without the warmup")
    assert client.post(f"{url}/methods", json={"methods": ["dsir"]}).status_code == 202
    Worker(settings).run(once=True)
    assert client.get(url).json()["methods"] == ["bm25", "dsir", "rds"]
