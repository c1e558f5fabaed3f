"""Schemathesis against the real API over loopback: no 5xx, no answer outside the schema.

``gradstore api`` runs as its own process (uvicorn, keep-alive, the JSON logs) on
127.0.0.1 with API keys and model roots as in production, in front of a data directory
holding a dataset and a ready store. ``st run`` fuzzes every operation of /openapi.json
with a fixed seed and a bounded number of cases (examples, coverage, fuzzing and stateful
phases; all checks but ``positive_data_acceptance``, see docs/reliability.md); the hooks
in fuzz_hooks.py point some requests at the real IDs and model. The server's own access
log is the second witness: it must show no status >= 500 and no unhandled error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from deployments import prepare
from processes import Process, free_port, wait_for_http

pytestmark = pytest.mark.slow

# fixed in the suite; set them to explore further (docs/reliability.md has the figures)
SEED = int(os.environ.get("GRADSTORE_FUZZ_SEED", "0"))
MAX_EXAMPLES = int(os.environ.get("GRADSTORE_FUZZ_EXAMPLES", "100"))  # per operation, phase
HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, toy_pool_file, tiny_model_dir):
    return prepare(tmp_path_factory.mktemp("fuzz"), toy_pool_file, tiny_model_dir)


def access_lines(log: Path) -> list[dict]:
    records = []
    for line in log.read_text().split("\n"):
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


def test_schemathesis_finds_no_server_error_and_no_schema_violation(deployment):
    base, env = deployment.base, deployment.env
    ids = {
        "dataset_id": deployment.dataset_id,
        "datastore_id": deployment.datastore_id,
        "model_path": deployment.model_path,
        "example_id": "add-00000",
    }
    port = free_port()
    log = base / "api.log"
    server = Process(["api", "--port", str(port)], env, log)
    url = f"http://127.0.0.1:{port}"
    report = base / "schemathesis.json"
    try:
        wait_for_http(url, server)
        st = Path(sys.executable).with_name("st")
        command = [
            str(st), "run", f"{url}/openapi.json",
            "--seed", str(SEED),
            "--max-examples", str(MAX_EXAMPLES),
            "--workers", "1",
            "--phases", "examples,coverage,fuzzing,stateful",
            "--checks", "all",
            "--exclude-checks", "positive_data_acceptance",
            "--continue-on-failure",
            "--request-timeout", "60",
            "--header", f"Authorization: {deployment.headers['Authorization']}",
            "--report", "json",
            "--report-json-path", str(report),
        ]  # fmt: skip
        fuzz_env = os.environ | {
            "SCHEMATHESIS_HOOKS": "fuzz_hooks",
            "PYTHONPATH": str(HERE),
            "GRADSTORE_FUZZ_IDS": json.dumps(ids),
            "NO_COLOR": "1",
        }
        run = subprocess.run(
            command, env=fuzz_env, cwd=base, capture_output=True, text=True, timeout=900
        )
    finally:
        server.stop()
    summary = json.loads(report.read_text())
    records = access_lines(log)
    access = [r for r in records if r.get("logger") == "gradstore.access"]
    statuses = Counter(r["status"] for r in access)
    by_route = Counter(f"{r['method']} {r['route']} {r['status']}" for r in access)
    unhandled = [r for r in records if r.get("message", "").startswith("unhandled error")]
    figures = {
        "seed": SEED,
        "max_examples": MAX_EXAMPLES,
        "cases": summary["test_cases"]["generated"],
        "requests": sum(statuses.values()),
        "status_classes": dict(
            sorted(Counter(f"{s // 100}xx" for s in statuses.elements()).items())
        ),
        "server_errors": sum(n for s, n in statuses.items() if s >= 500),
        "failures": summary["test_cases"]["unique_failures"],
        "seconds": round(summary["running_time"], 1),
    }
    print("schemathesis figures:", json.dumps(figures))
    print("by route:", json.dumps(dict(sorted(by_route.items())), indent=0))
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert summary["test_cases"]["unique_failures"] == 0 and summary["errors"] == []
    assert figures["server_errors"] == 0 and not unhandled, unhandled[:3]
    assert statuses[200] > 0 and figures["cases"] >= 1000  # it reached real work
