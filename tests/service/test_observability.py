"""Request ids, structured logs an operator can follow into the workers, metrics, and what
a 500 tells (nothing but its id) over a real HTTP connection that stays usable."""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
from collections import Counter

import pytest
import torch
import uvicorn
from api_fixtures import assert_problem
from conftest import TINY_BUILD
from fastapi.testclient import TestClient
from tcp_proxy import free_port, wait_until

from gradstore.db.logs import JsonFormatter
from gradstore.db.settings import Settings
from gradstore.migrations import upgrade
from gradstore.service.app import create_app
from gradstore.service.problem_types import TYPES
from gradstore.worker.runner import Worker

SECRET = "postgresql://admin:hunter2@db.internal:5432/prod at /srv/secret/path"


@pytest.fixture
def settings(tmp_path, model_root):
    settings = Settings(
        data_dir=tmp_path / "data", heartbeat_seconds=0.2, model_roots=str(model_root)
    )
    settings.data_dir.mkdir(parents=True)
    upgrade(settings.database_url)
    return settings


pytest_plugins = ["api_fixtures"]


@pytest.fixture
def json_logs():
    """Every record of every logger, formatted as the services write them."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root.removeHandler(handler)
    root.setLevel(level)


def failing_app(settings):
    app = create_app(settings)

    @app.get("/boom")
    def boom():
        raise RuntimeError(f"cannot connect to {SECRET}")

    return app


def test_request_ids(settings):
    with TestClient(create_app(settings)) as client:
        made = client.get("/v1/datasets").headers["x-request-id"]
        assert len(made) == 32 and made != client.get("/healthz").headers["x-request-id"]
        given = client.get("/v1/datasets", headers={"X-Request-ID": "pipeline-7:step/3"})
        assert given.headers["x-request-id"] == "pipeline-7:step/3"
        for hostile in ("has space", "x" * 129, 'quote"', "<script>", "caf\xe9".encode()):
            answer = client.get("/v1/datasets", headers={"X-Request-ID": hostile})
            assert (
                answer.headers["x-request-id"] != hostile
                and len(answer.headers["x-request-id"]) == 32
            )
        problem = assert_problem(
            client.get("/v1/datasets/nope", headers={"X-Request-ID": "r-1"}), 404
        )
        assert problem["request_id"] == "r-1"


def test_a_500_says_only_its_id_and_the_connection_survives(settings, json_logs):
    """Over real HTTP/1.1 keep-alive: after a 500 the same socket answers the next request."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(failing_app(settings), host="127.0.0.1", port=port, log_config=None)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 30)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            reader = sock.makefile("rb")
            first = http_exchange(sock, reader, "/boom", "trace-500")
            second = http_exchange(sock, reader, "/healthz", "after-500")
        status, headers, body = first
        assert status == 500 and headers["x-request-id"] == "trace-500"
        assert headers["content-type"].startswith("application/problem+json")
        problem = json.loads(body)
        assert problem["type"] == "/problems/internal" and problem["request_id"] == "trace-500"
        for leak in ("hunter2", "db.internal", "5432", "/srv/secret", "RuntimeError", "prod"):
            assert leak not in body.decode()
        assert second[0] == 200 and second[1]["x-request-id"] == "after-500"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    records = json_logs()
    (error,) = [r for r in records if r.get("request_id") == "trace-500" and r["level"] == "error"]
    assert "hunter2" in error["exception"]  # the details are in the log, for the operator
    (access,) = [
        r
        for r in records
        if r["logger"] == "gradstore.access" and r.get("request_id") == "trace-500"
    ]
    assert access["status"] == 500 and access["route"] == "/boom"
    with TestClient(create_app(settings)) as client:
        metrics = client.get("/metrics").text
    assert 'gradstore_http_requests_total{method="GET",route="/boom",status="500"}' in metrics


def http_exchange(sock, reader, path: str, request_id: str):
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nX-Request-ID: {request_id}\r\n\r\n".encode())
    status = int(reader.readline().split()[1])
    headers = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    assert headers.get("connection", "keep-alive") != "close"
    return status, headers, reader.read(int(headers["content-length"]))


def test_one_request_followed_through_api_and_worker_logs(
    settings, model_root, toy_pool_file, json_logs
):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with TestClient(create_app(settings)) as client:
            with open(toy_pool_file, "rb") as handle:
                pool = client.post("/v1/datasets", data={"name": "p"}, files={"file": handle})
            body = {"dataset_id": pool.json()["id"], "model": {"path": str(model_root / "tiny")}}
            created = client.post(
                "/v1/datastores", json=body | TINY_BUILD, headers={"X-Request-ID": "build-42"}
            )
            store_id = created.json()["id"]
            metrics = client.get("/metrics").text
            assert 'gradstore_work_units{kind="warmup",state="pending"} 1.0' in metrics
            Worker(settings).run(once=True)
            assert client.get(f"/v1/datastores/{store_id}").json()["status"] == "ready"
            select = {"targets": [{"prompt": "1+1=", "completion": "2"}], "top_k": 3}
            assert client.post(f"/v1/datastores/{store_id}/select", json=select).status_code == 200
            metrics = client.get("/metrics").text
    finally:
        torch.set_num_threads(threads)
    records = json_logs()
    traced = [r for r in records if r.get("request_id") == "build-42"]
    api = [r for r in traced if r["logger"].startswith("gradstore.a")]
    assert {"gradstore.access", "gradstore.api"} <= {r["logger"] for r in api}
    selects = [r for r in records if r.get("route") == "/v1/datastores/{datastore_id}/select"]
    assert selects and all(r["datastore_id"] == store_id for r in selects)  # found by store
    worker = [r for r in traced if r["logger"] == "gradstore.worker"]
    kinds = {r.get("unit_kind") for r in worker}
    assert {"warmup", "featurize", "index", "artifact", "finish"} <= kinds, kinds
    assert all(r["datastore_id"] == store_id and r["worker"] and r["unit_id"] for r in worker)
    finished = Counter(r["unit_kind"] for r in worker if r["message"].startswith("finished"))
    # warmup, 2 checkpoints × 4 shards, index; the default methods' extra artifacts: RDS+
    # embeddings in 4 row units, DSIR's counts in 1; the finish unit (verifies)
    assert finished == {"warmup": 1, "featurize": 8, "index": 1, "artifact": 5, "finish": 1}
    # every line of the build carries the id; none of another request's lines does
    assert not [
        r
        for r in records
        if r.get("datastore_id") == store_id
        and r.get("request_id") not in (None, "build-42")
        and r["logger"] == "gradstore.worker"
    ]

    phase = 'gradstore_select_phase_duration_seconds_count{method="less",phase="target_gradients"}'
    assert phase in metrics  # (a counter of this process: other tests add to it)
    assert 'gradstore_workers{state="stopped"} 1.0' in metrics
    counters = {
        line.split("{")[0]: float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("gradstore_worker_") and "{" in line
    }
    assert counters["gradstore_worker_examples_featurized_total"] == 96  # 48 rows x 2 ckpts
    assert counters["gradstore_worker_units_completed_total"] == sum(finished.values())
    assert counters["gradstore_worker_last_heartbeat_timestamp_seconds"] > 0
    assert "gradstore_database_up 1.0" in metrics


def test_every_problem_type_is_documented(settings):
    with TestClient(create_app(settings)) as client:
        listed = client.get("/problems").json()
        assert {t["slug"] for t in listed} == set(TYPES)
        for entry in listed:
            assert client.get(entry["type"]).json() == entry
        assert_problem(client.get("/problems/nope"), 404, slug="not-found")
