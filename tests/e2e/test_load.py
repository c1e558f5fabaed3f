"""Concurrent selects and uploads against ``gradstore api`` over loopback: zero errors.

Bounded: a fixed number of requests per client thread (LESS and BM25 selects on a ready
store, JSONL uploads of distinct pools, reads of stored examples), each client on its own
keep-alive connection. Every answer must be a 2xx, the audit log must hold every select
and the datasets every upload. On SQLite (one writer: uploads and audit records contend
for it) and, when configured, PostgreSQL.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections import defaultdict

import httpx
import pytest
from deployments import prepare
from processes import Process, free_port, wait_for_http

pytestmark = pytest.mark.slow

SELECTERS, SELECTS_EACH = 8, 25
UPLOADERS, UPLOADS_EACH = 4, 15
READERS, READS_EACH = 2, 50


@pytest.fixture(params=["sqlite", "postgresql"])
def deployment(request, tmp_path, toy_pool_file, tiny_model_dir):
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else ""
    return prepare(tmp_path, toy_pool_file, tiny_model_dir, database_url=url)


def pool_lines(client: int, upload: int) -> bytes:
    lines = [
        json.dumps(
            {
                "id": f"c{client}-u{upload}-{i}",
                "prompt": f"{i} + {upload} =",
                "completion": f"{i + upload}",
            }
        )
        for i in range(40)
    ]
    return "\n".join(lines).encode()


def test_concurrent_selects_and_uploads_have_no_errors(deployment):
    port = free_port()
    log = deployment.base / "api.log"
    server = Process(["api", "--port", str(port)], deployment.env, log)
    url = f"http://127.0.0.1:{port}"
    latencies: dict[str, list[float]] = defaultdict(list)
    failures: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(SELECTERS + UPLOADERS + READERS)

    def record(kind: str, response: httpx.Response, seconds: float) -> None:
        with lock:
            latencies[kind].append(seconds)
            if not response.is_success:
                failures.append(f"{kind}: {response.status_code} {response.text[:300]}")

    def run(kind: str, count: int, call) -> None:
        with httpx.Client(base_url=url, headers=deployment.headers, timeout=120) as client:
            start.wait()
            for i in range(count):
                began = time.perf_counter()
                try:
                    response = call(client, i)
                except httpx.HTTPError as exc:  # a reset or a timeout is an error too
                    with lock:
                        failures.append(f"{kind}: {type(exc).__name__}: {exc}")
                    continue
                record(kind, response, time.perf_counter() - began)

    def select(worker: int):
        def call(client, i):
            method = "less" if (worker + i) % 3 else "bm25"
            target = {
                "subtask": f"s{worker}",
                "prompt": f"Q: {worker}+{i}\nA:",
                "completion": str(worker + i),
            }
            body = {"targets": [target], "method": method, "top_k": 5}
            return client.post(f"/v1/datastores/{deployment.datastore_id}/select", json=body)

        return call

    def upload(worker: int):
        def call(client, i):
            files = {"file": ("pool.jsonl", pool_lines(worker, i))}
            return client.post("/v1/datasets", data={"name": f"load {worker}/{i}"}, files=files)

        return call

    def read(client, i):
        return client.get(f"/v1/datasets/{deployment.dataset_id}/examples/add-0000{i % 6}")

    threads = [
        threading.Thread(target=run, args=("select", SELECTS_EACH, select(w)))
        for w in range(SELECTERS)
    ]
    threads += [
        threading.Thread(target=run, args=("upload", UPLOADS_EACH, upload(w)))
        for w in range(UPLOADERS)
    ]
    threads += [
        threading.Thread(target=run, args=("read", READS_EACH, read)) for _ in range(READERS)
    ]
    try:
        wait_for_http(url, server)
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
        wall = time.perf_counter() - began
        with httpx.Client(base_url=url, headers=deployment.headers) as client:
            audit = client.get(f"/v1/datastores/{deployment.datastore_id}/selections").json()
            datasets = client.get("/v1/datasets").json()
    finally:
        server.stop()

    figures = {
        kind: {
            "requests": len(values),
            "p50_ms": round(statistics.median(values) * 1000, 1),
            "p95_ms": round(statistics.quantiles(values, n=20)[-1] * 1000, 1),
        }
        for kind, values in sorted(latencies.items())
    }
    figures["wall_s"] = round(wall, 1)
    print("load figures:", json.dumps(figures))
    assert failures == [], failures[:5]
    assert len(latencies["select"]) == SELECTERS * SELECTS_EACH
    assert len(latencies["upload"]) == UPLOADERS * UPLOADS_EACH
    assert audit["count"] == SELECTERS * SELECTS_EACH
    assert datasets["count"] == 1 + UPLOADERS * UPLOADS_EACH
    errors = [line for line in log.read_text().split("\n") if '"level": "error"' in line]
    assert errors == [], errors[:3]
