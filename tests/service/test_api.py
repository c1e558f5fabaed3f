"""API v1 through FastAPI's test client on a migrated SQLite database, with a real worker."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest
import sqlalchemy as sa
import torch
from conftest import TINY_BUILD
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from gradstore.db.engine import make_engine
from gradstore.db.models import SelectionRecord, WorkUnit
from gradstore.db.settings import Settings
from gradstore.examples import read_jsonl
from gradstore.migrations import upgrade
from gradstore.service.app import create_app
from gradstore.worker.runner import Worker

PROBLEM = "application/problem+json"


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


@pytest.fixture
def one_torch_thread():
    """Builds in this process use one torch thread: on 2 shared cores more only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_problem(response, status: int, fragment: str):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status and fragment in body["detail"], body


def upload(client, pool_file, name="pool"):
    with open(pool_file, "rb") as handle:
        response = client.post("/v1/datasets", data={"name": name}, files={"file": handle})
    assert response.status_code == 201, response.text
    return response.json()


def test_dataset_upload_both_ways_is_content_addressed(client, toy_pool_file):
    first = upload(client, toy_pool_file)
    assert first["num_examples"] == 48 and len(first["sha256"]) == 64
    inline = client.post(
        "/v1/datasets",
        json={"name": "inline", "examples": [{"id": "a", "prompt": "1+1=", "completion": "2"}]},
    )
    assert inline.status_code == 201 and inline.json()["num_examples"] == 1
    again = upload(client, toy_pool_file, name="same bytes")
    assert again["sha256"] == first["sha256"] and again["id"] != first["id"]
    page = client.get("/v1/datasets", params={"limit": 2, "offset": 1}).json()
    assert page["count"] == 3 and [d["id"] for d in page["data"]] == [
        inline.json()["id"],
        again["id"],
    ]
    example = client.get(f"/v1/datasets/{first['id']}/examples/add-00000").json()
    assert example["id"] == "add-00000" and "prompt" in example


def test_bad_datasets_are_problems_naming_the_line(client):
    lines = [json.dumps({"prompt": "a", "completion": "b"}), '{"prompt": 1, "completion": "b"}']
    response = client.post(
        "/v1/datasets", data={"name": "bad"}, files={"file": ("p.jsonl", "\n".join(lines))}
    )
    assert_problem(response, 422, "line 2: prompt")  # the second line, counted from 1
    assert_problem(client.post("/v1/datasets", json={"name": "x", "examples": []}), 422, "examples")
    assert_problem(client.post("/v1/datasets", content=b"x"), 422, "multipart/form-data")
    assert_problem(client.get("/v1/datasets/nope"), 404, "no dataset with id 'nope'")
    assert_problem(client.get("/v1/datasets/nope/examples/1"), 404, "no dataset")


def test_datastore_requests_are_validated(client, toy_pool_file, tmp_path):
    dataset = upload(client, toy_pool_file)
    body = {"dataset_id": dataset["id"], "model": {"path": str(tmp_path / "missing")}}
    assert_problem(client.post("/v1/datastores", json=body), 422, "not a local directory")
    body = {"dataset_id": "nope", "model": {"path": str(tmp_path)}}
    assert_problem(client.post("/v1/datastores", json=body), 404, "no dataset")
    body = {"dataset_id": dataset["id"], "model": {"path": str(tmp_path)}, "lora": {"r": 0}}
    assert_problem(client.post("/v1/datastores", json=body), 422, "lora.r")
    body = {"dataset_id": dataset["id"], "model": {"path": str(tmp_path)}, "options": {"x": 1}}
    assert_problem(client.post("/v1/datastores", json=body), 422, "options")
    body = {"dataset_id": dataset["id"], "model": {"path": str(tmp_path)}}
    assert_problem(client.post("/v1/datastores", json=body), 422, "has no config.json")
    body = {"dataset_id": dataset["id"], "model": {"path": "meta-llama/Llama-3.2-1B"}}
    assert_problem(client.post("/v1/datastores", json=body), 422, "must be an absolute path")
    assert_problem(client.get("/v1/datastores/nope"), 404, "no datastore")
    assert_problem(client.delete("/v1/datastores/nope"), 404, "no datastore")
    assert client.get("/v1/datastores").json() == {"data": [], "count": 0}


def test_build_select_and_every_select_error(
    client, settings, toy_pool_file, tiny_model_dir, one_torch_thread
):
    dataset = upload(client, toy_pool_file)
    body = {"dataset_id": dataset["id"], "model": {"path": str(tiny_model_dir)}} | TINY_BUILD
    created = client.post("/v1/datastores", json=body)
    assert created.status_code == 202
    store_id = created.json()["id"]
    assert created.headers["location"] == f"/v1/datastores/{store_id}"
    assert created.json()["status"] == "queued"
    select = f"/v1/datastores/{store_id}/select"
    targets = [{"subtask": "add", "prompt": "Q: 3+4\nA:", "completion": "7"}]
    assert_problem(client.post(select, json={"targets": targets, "top_k": 3}), 409, "not ready")
    unknown = {"targets": targets, "top_k": 3, "method": "nope"}
    assert_problem(client.post(select, json=unknown), 422, "unknown selection method 'nope'")
    too_many = {"targets": targets * (settings.max_targets + 1), "top_k": 3}
    assert_problem(client.post(select, json=too_many), 413, f"at most {settings.max_targets}")

    Worker(settings).run(once=True)
    store = client.get(f"/v1/datastores/{store_id}").json()
    assert store["status"] == "ready", store
    assert store["progress"]["done"] == store["progress"]["total"] == 96
    assert [c["index"] for c in store["checkpoints"]] == [1, 2] and store["dim"] == 256

    answer = client.post(select, json={"targets": targets, "top_k": 5})
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert len(result["selected"]) == 5 and result["num_candidates"] == 48
    scores = [s["score"] for s in result["selected"]]
    assert scores == sorted(scores, reverse=True)
    assert {"target_gradients", "search", "total"} <= set(result["timings_ms"])
    fraction = client.post(select, json={"targets": targets, "fraction": 0.25, "method": "bm25"})
    assert len(fraction.json()["selected"]) == 12

    unknown = {"targets": targets, "top_k": 3, "method": "nope"}
    assert_problem(client.post(select, json=unknown), 422, "unknown selection method 'nope'")
    both = {"targets": targets, "top_k": 3, "fraction": 0.1}
    assert_problem(client.post(select, json=both), 422, "exactly one")
    assert_problem(client.post(select, json={"targets": targets}), 422, "exactly one")
    bad_target = {"targets": [{"subtask": "s", "prompt": "only a prompt"}], "top_k": 3}
    assert_problem(client.post(select, json=bad_target), 422, "needs 'messages'")
    assert_problem(client.post(select, json={"targets": [], "top_k": 3}), 422, "targets")
    options = {"targets": targets, "top_k": 3, "options": {"aggregate": "median"}}
    assert_problem(client.post(select, json=options), 422, "aggregate")

    with Session(make_engine(settings.database_url)) as session:
        audit = session.scalars(sa.select(SelectionRecord).order_by(SelectionRecord.created_at))
        assert [(r.method, r.num_selected) for r in audit] == [("less", 5), ("bm25", 12)]
    log = client.get(f"/v1/datastores/{store_id}/selections", params={"limit": 1}).json()
    assert log["count"] == 2 and log["data"][0]["method"] == "bm25"
    assert log["data"][0]["request"]["target_ids"] == ["target-0"]
    assert_problem(client.get("/v1/datastores/nope/selections"), 404, "no datastore")
    metrics = client.get("/metrics").text
    assert 'gradstore_datastores{status="ready"} 1.0' in metrics
    assert 'gradstore_select_duration_seconds_count{method="less"}' in metrics
    assert 'gradstore_select_phase_duration_seconds_count{method="less",phase="search"}' in metrics

    assert client.delete(f"/v1/datastores/{store_id}").status_code == 204
    assert_problem(client.get(f"/v1/datastores/{store_id}"), 404, "no datastore")
    assert not (settings.datastores_dir / store_id).exists()


def test_cancel_a_queued_build(client, settings, toy_pool_file, tiny_model_dir):
    """One DELETE cancels and removes: the record is gone at once, nothing is left to run."""
    dataset = upload(client, toy_pool_file)
    body = {"dataset_id": dataset["id"], "model": {"path": str(tiny_model_dir)}} | TINY_BUILD
    store_id = client.post("/v1/datastores", json=body).json()["id"]
    assert client.delete(f"/v1/datastores/{store_id}").status_code == 204
    assert_problem(client.get(f"/v1/datastores/{store_id}"), 404, "no datastore")
    assert_problem(client.delete(f"/v1/datastores/{store_id}"), 404, "no datastore")
    assert not Worker(settings).run_one()  # nothing left to claim


def test_cancel_in_the_middle_of_a_shard(
    client, settings, toy_pool_file, tiny_model_dir, one_torch_thread, caplog
):
    """DELETE during featurize: the worker stops at its next batch and leaves nothing."""
    dataset = upload(client, toy_pool_file)
    slow = TINY_BUILD | {"shard_size": 48, "batch_size": 1}
    body = {"dataset_id": dataset["id"], "model": {"path": str(tiny_model_dir)}} | slow
    store_id = client.post("/v1/datastores", json=body).json()["id"]
    fast = settings.model_copy(update={"heartbeat_seconds": 0.02})
    worker = threading.Thread(target=Worker(fast).run, kwargs={"once": True})
    worker.start()
    engine = make_engine(settings.database_url)
    running = sa.select(WorkUnit.id).where(
        WorkUnit.datastore_id == store_id,
        WorkUnit.kind == "featurize",
        WorkUnit.state == "running",
    )
    deadline = time.monotonic() + 60
    with Session(engine) as session:
        while (unit := session.scalar(running)) is None and time.monotonic() < deadline:
            time.sleep(0.005)
    assert unit is not None, "no featurize shard started"
    assert client.delete(f"/v1/datastores/{store_id}").status_code == 204
    worker.join(timeout=60)
    assert not worker.is_alive()
    with Session(engine) as session:
        states = session.scalars(sa.select(WorkUnit.state).where(WorkUnit.kind == "featurize"))
        assert "done" not in set(states)  # stopped in its first shard
    engine.dispose()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # a stop, no failure
    assert_problem(client.get(f"/v1/datastores/{store_id}"), 404, "no datastore")
    assert not (settings.datastores_dir / store_id).exists()


def test_api_keys_are_required_when_configured(tmp_path):
    settings = Settings(data_dir=tmp_path, api_keys="k1,k2")
    upgrade(settings.database_url)
    with TestClient(create_app(settings)) as client:
        assert_problem(client.get("/v1/datasets"), 401, "API key")
        wrong = client.get("/v1/datasets", headers={"Authorization": "Bearer nope"})
        assert_problem(wrong, 401, "API key")
        assert client.get("/v1/datasets", headers={"Authorization": "Bearer k2"}).status_code == 200
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").json() == {"status": "ready"}
        assert "gradstore_http_requests_total" in client.get("/metrics").text
    with pytest.raises(ValueError, match="GRADSTORE_API_KEYS"):
        Settings(data_dir=tmp_path, environment="production")
    with pytest.raises(ValueError, match="must be shorter than"):
        Settings(data_dir=tmp_path, lease_seconds=5, heartbeat_seconds=5)


def test_openapi_describes_the_contract(client):
    spec = client.get("/openapi.json").json()
    for path in (
        "/v1/datasets",
        "/v1/datasets/{dataset_id}/examples/{example_id}",
        "/v1/datastores",
        "/v1/datastores/{datastore_id}",
        "/v1/datastores/{datastore_id}/select",
        "/v1/datastores/{datastore_id}/selections",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in spec["paths"], path
    assert "multipart/form-data" in spec["paths"]["/v1/datasets"]["post"]["requestBody"]["content"]
    select_answers = spec["paths"]["/v1/datastores/{datastore_id}/select"]["post"]["responses"]
    assert set(select_answers) >= {"200", "404", "409", "422"}
    assert "application/problem+json" in select_answers["409"]["content"]
    # every method's details are in the schema of the select response
    schemas = spec["components"]["schemas"]
    for name in ("LessDetails", "In2CoreDetails", "DeliftDetails", "LandmarkDetails"):
        assert name in schemas, name
    assert schemas["DeliftDetails"]["properties"]["gains"]["type"] == "array"


def test_upload_limits_and_line_splitting(tmp_path):
    settings = Settings(data_dir=tmp_path, max_upload_bytes=400)
    upgrade(settings.database_url)
    with TestClient(create_app(settings)) as client:
        # U+2028 inside a JSON string is not a line break for JSONL (nor for read_jsonl)
        record = {"id": "a", "prompt": "x\u2028y", "completion": "z"}
        line = json.dumps(record, ensure_ascii=False).encode()
        ok = client.post("/v1/datasets", data={"name": "n"}, files={"file": ("p.jsonl", line)})
        assert ok.status_code == 201 and ok.json()["num_examples"] == 1, ok.text
        stored = client.get(f"/v1/datasets/{ok.json()['id']}/examples/a").json()
        assert stored["prompt"] == "x\u2028y"
        big = b"\n".join([line] * 20)
        too_big = client.post("/v1/datasets", data={"name": "n"}, files={"file": ("p", big)})
        assert_problem(too_big, 413, "exceeds the limit of 400")
        many = {"name": "n", "examples": [record] * 20}
        assert_problem(client.post("/v1/datasets", json=many), 413, "limit of 400")

        def chunked():  # no content-length: the streamed body is counted
            yield json.dumps(many).encode()

        streamed = client.post(
            "/v1/datasets", content=chunked(), headers={"content-type": "application/json"}
        )
        assert_problem(streamed, 413, "limit of 400")
        duplicate = b"\n".join([line, line])
        dup = client.post("/v1/datasets", data={"name": "n"}, files={"file": ("p", duplicate)})
        assert_problem(dup, 422, "duplicate id 'a'")


def test_datastore_pages(client, toy_pool_file, tiny_model_dir):
    dataset = upload(client, toy_pool_file)
    body = {"dataset_id": dataset["id"], "model": {"path": str(tiny_model_dir)}} | TINY_BUILD
    ids = [client.post("/v1/datastores", json=body).json()["id"] for _ in range(3)]
    page = client.get("/v1/datastores", params={"limit": 2, "offset": 1}).json()
    assert page["count"] == 3 and [d["id"] for d in page["data"]] == ids[1:]
    assert all(d["status"] == "queued" and d["progress"]["total"] == 0 for d in page["data"])
    assert_problem(client.get("/v1/datastores", params={"limit": 0}), 422, "limit")


def test_readyz_names_what_is_unreachable(tmp_path):
    settings = Settings(data_dir=tmp_path, database_url="postgresql+psycopg://u@127.0.0.1:9/none")
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200  # alive, but not ready
        assert_problem(client.get("/readyz"), 503, "database unreachable")
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'ok.db'}")
    with TestClient(create_app(settings)) as client:
        client.app.state.settings = settings.model_copy(update={"data_dir": blocked})
        assert_problem(client.get("/readyz"), 503, "artifact root")


def test_examples_are_fetched_as_read_jsonl_reads_them(client, settings, toy_pool_file):
    lines = [
        '{"prompt": "a", "completion": "b"}',
        "",
        '{"id": 7, "prompt": "x", "completion": "y", "meta": {"k": 1}}',
        '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}]}',
    ]
    data = "\r\n".join(lines).encode()
    uploaded = client.post("/v1/datasets", data={"name": "n"}, files={"file": ("p", data)})
    assert uploaded.status_code == 201 and uploaded.json()["num_examples"] == 3
    stored = settings.datasets_dir / f"{uploaded.json()['sha256']}.jsonl"
    pool = upload(client, toy_pool_file)["id"]
    for dataset_id, path in ((uploaded.json()["id"], stored), (pool, toy_pool_file)):
        for example in read_jsonl(path):  # the reference: every id, every field
            answer = client.get(f"/v1/datasets/{dataset_id}/examples/{example.id}")
            assert answer.json() == example.to_record()
    assert [e.id for e in read_jsonl(stored)] == ["0", "7", "3"]
    missing = client.get(f"/v1/datasets/{uploaded.json()['id']}/examples/1")
    assert_problem(missing, 404, "has no example with id '1'")
