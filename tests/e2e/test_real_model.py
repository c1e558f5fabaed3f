"""End to end on a real pretrained model (SmolLM2-135M-Instruct) and real data, over HTTP.

``gradstore serve`` builds a store serving every method from a few dozen Arena-Hard prompts
with their answers (d = 1024, one checkpoint), then every method selects for GSM8K and
HumanEval targets through the API. A pool example given back as a target must come out on top
for every method but random (the direction of their scores). The model and
the data come from registry packages, fetched and converted once per machine.
"""

from __future__ import annotations

import random

import httpx
import pytest
from processes import Process, free_port, wait_for_http, wait_ready
from real_assets import smollm2_dir
from test_processes import FAST_LEASES, upload

from gradstore.assets.datasets import load_dataset_examples
from gradstore.examples import write_jsonl
from gradstore.selection import METHODS

pytestmark = [pytest.mark.slow, pytest.mark.real_model]

PER_CATEGORY = 6
BUILD = {
    "lora": {"r": 8},
    "warmup": {
        "fraction": 0.25,
        "epochs": 1,
        "learning_rate": 2e-4,
        "batch_size": 4,
        "gradient_accumulation": 1,
    },
    "projection": {"dim": 1024},
    "max_seq_len": 128,
    "shard_size": 9,
    "delift": {"neighbours": 2},
    "methods": sorted(METHODS),
}
# A pool example given back as a target must rank first (every method but random: the toy
# contract test checks the others on a random tiny model, DELIFT needs one that can copy).
COPY_FIRST = tuple(sorted(set(METHODS) - {"random"}))


@pytest.fixture(scope="module")
def real_pool(tmp_path_factory):
    rng = random.Random(0)
    arena = load_dataset_examples("arena-hard")
    pool = []
    for category in ("coding", "math", "creative_writing"):
        members = [e for e in arena if e.subtask == category]
        pool += rng.sample(members, PER_CATEGORY)
    path = tmp_path_factory.mktemp("real") / "pool.jsonl"
    write_jsonl(pool, path)
    return pool, path


def test_every_method_builds_and_selects_on_smollm2(tmp_path, real_pool):
    model_dir = smollm2_dir()
    pool, pool_file = real_pool
    port, data = free_port(), tmp_path / "data"
    env = FAST_LEASES | {"GRADSTORE_DATA_DIR": str(data), "GRADSTORE_LEASE_SECONDS": "600"}
    base = f"http://127.0.0.1:{port}"
    serve = Process(["serve", "--port", str(port), "--data-dir", str(data)], env, tmp_path / "log")
    gsm8k = load_dataset_examples("gsm8k-cot")[:2]
    humaneval = load_dataset_examples("humaneval")[:2]
    targets = [
        {"subtask": "math", "prompt": e.prompt, "completion": e.completion} for e in gsm8k
    ] + [{"subtask": "coding", "prompt": e.prompt, "completion": e.completion} for e in humaneval]
    copied = pool[PER_CATEGORY + 1]  # a math prompt of the pool, asked for as a target
    copy_target = [{"subtask": "copy", "prompt": copied.prompt, "completion": copied.completion}]
    try:
        wait_for_http(base, serve)
        with httpx.Client(base_url=base, timeout=600) as client:
            dataset = upload(client, pool_file)
            body = {"dataset_id": dataset, "model": {"path": str(model_dir)}} | BUILD
            created = client.post("/v1/datastores", json=body)
            assert created.status_code == 202, created.text
            store = wait_ready(client, created.json()["id"], timeout=1800)
            assert store["num_examples"] == len(pool) and not store["skipped"]
            ids = {e.id for e in pool}
            for method in sorted(METHODS):
                answer = client.post(
                    f"/v1/datastores/{store['id']}/select",
                    json={"targets": targets, "method": method, "top_k": 4},
                )
                assert answer.status_code == 200, (method, answer.text)
                selected = answer.json()["selected"]
                assert len(selected) == 4 and {s["id"] for s in selected} <= ids, method
            for method in COPY_FIRST:
                answer = client.post(
                    f"/v1/datastores/{store['id']}/select",
                    json={"targets": copy_target, "method": method, "top_k": 3},
                )
                assert answer.status_code == 200, (method, answer.text)
                assert answer.json()["selected"][0]["id"] == copied.id, method
    finally:
        serve.stop()
