"""Database down: the API starts, answers 503 with Retry-After (no internals), keeps its
metrics, and recovers by itself when the database is back; so do the workers."""

from __future__ import annotations

import logging
import threading
import time

import pytest
import sqlalchemy as sa
from api_fixtures import assert_problem
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url
from tcp_proxy import TcpProxy, free_port, wait_until

from gradstore.db.models import WorkerRecord
from gradstore.db.settings import Settings
from gradstore.service.app import create_app
from gradstore.worker.runner import Worker

ID = "0" * 32
ROUTES = [
    ("GET", "/v1/datasets", None),
    ("POST", "/v1/datasets", {"name": "n", "examples": [{"prompt": "a", "completion": "b"}]}),
    ("GET", f"/v1/datasets/{ID}", None),
    ("GET", f"/v1/datasets/{ID}/examples/1", None),
    ("POST", "/v1/datastores", {"dataset_id": ID, "model": {"path": "/models/m"}}),
    ("GET", "/v1/datastores", None),
    ("GET", f"/v1/datastores/{ID}", None),
    ("DELETE", f"/v1/datastores/{ID}", None),
    (
        "POST",
        f"/v1/datastores/{ID}/select",
        {"targets": [{"prompt": "a", "completion": "b"}], "top_k": 1},
    ),
    ("POST", f"/v1/datastores/{ID}/verify", None),
    ("GET", f"/v1/datastores/{ID}/selections", None),
]


def assert_down(client: TestClient, secrets: list[str]) -> None:
    for method, path, body in ROUTES:
        answer = client.request(method, path, json=body)
        problem = assert_problem(answer, 503, "database", "database-unavailable")
        assert answer.headers["retry-after"] == "5", (method, path)
        assert not any(secret in answer.text for secret in secrets), problem
    ready = client.get("/readyz")
    assert_problem(ready, 503, "database unreachable", "database-unavailable")
    assert not any(secret in ready.text for secret in secrets)
    assert client.get("/healthz").status_code == 200
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and "gradstore_database_up 0.0" in metrics.text
    assert 'gradstore_http_requests_total{method="GET",route="/v1/datasets",status="503"}' in (
        metrics.text
    )


def test_sqlite_unavailable(tmp_path):
    missing = tmp_path / "not-mounted" / "gradstore.db"
    settings = Settings(data_dir=tmp_path / "data", database_url=f"sqlite:///{missing}")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert_down(client, [str(missing), "sqlite3", "OperationalError: ("])
    assert not list((tmp_path / "data").rglob("*.jsonl"))  # no dataset file was written


@pytest.mark.postgres
def test_api_and_worker_recover_when_postgres_returns(tmp_path, postgres_url, caplog):
    real = make_url(postgres_url)
    port = free_port()
    proxied = real.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    from gradstore.migrations import upgrade

    upgrade(postgres_url)
    proxy = TcpProxy(port, (real.host, real.port or 5432))
    settings = Settings(
        data_dir=tmp_path / "data", database_url=proxied, poll_seconds=0.05, heartbeat_seconds=0.2
    )
    caplog.set_level(logging.INFO)
    stop = threading.Event()
    worker = Worker(settings)
    thread = threading.Thread(target=worker.run, kwargs={"stop": stop}, daemon=True)
    secrets = [str(port), real.database or "test", "psycopg", "connection to server"]
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        thread.start()  # both start with nothing listening on the database's port
        assert_down(client, secrets)
        time.sleep(0.5)
        assert thread.is_alive()
        proxy.start()
        listed = wait_until(lambda: client.get("/v1/datasets").status_code == 200, 30, 0.2)
        assert listed
        assert client.get("/readyz").json() == {"status": "ready"}
        assert "gradstore_database_up 1.0" in client.get("/metrics").text
        created = client.post("/v1/datasets", json=ROUTES[1][2])
        assert created.status_code == 201, created.text

        def registered():
            with sa.create_engine(postgres_url).connect() as connection:
                return connection.execute(sa.select(WorkerRecord.id)).first()

        assert wait_until(registered, 30, 0.2)

        def recovered():  # the worker finished a loop since (a busy host may take a while)
            return any("database reachable again" in r.getMessage() for r in caplog.records)

        assert wait_until(recovered, 60, 0.2)
        proxy.stop()  # it goes away again, with the pools' connections open
        assert_problem(client.get("/v1/datasets"), 503, slug="database-unavailable")
        proxy.start()
        assert wait_until(lambda: client.get("/v1/datasets").status_code == 200, 30, 0.2)
        assert client.get("/v1/datasets").json()["count"] == 1
    stop.set()
    thread.join(timeout=30)
    proxy.stop()
    messages = [r.getMessage() for r in caplog.records if r.name == "gradstore.worker"]
    assert sum("database unreachable" in m for m in messages) >= 1
    assert any("database reachable again" in m for m in messages)
