"""A coded store (``dtype`` int4) built through the API and a real worker, then selecting."""

from __future__ import annotations

import numpy as np
import torch
from conftest import TINY_BUILD
from fastapi.testclient import TestClient

from gradstore.db.settings import Settings
from gradstore.migrations import upgrade
from gradstore.service.app import create_app
from gradstore.store.datastore import Datastore
from gradstore.worker.runner import Worker


def test_an_int4_store_builds_through_the_api_and_selects(tmp_path, toy_pool_file, tiny_model_dir):
    settings = Settings(data_dir=tmp_path / "data", heartbeat_seconds=0.2)
    settings.data_dir.mkdir(parents=True)
    upgrade(settings.database_url)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with TestClient(create_app(settings)) as client, open(toy_pool_file, "rb") as handle:
            dataset = client.post("/v1/datasets", data={"name": "p"}, files={"file": handle})
            body = {"dataset_id": dataset.json()["id"], "model": {"path": str(tiny_model_dir)}}
            body |= TINY_BUILD | {"dtype": "int4", "scale_block": 64, "methods": ["less"]}
            created = client.post("/v1/datastores", json=body)
            assert created.status_code == 202, created.text
            store_id = created.json()["id"]
            Worker(settings).run(once=True)
            assert client.get(f"/v1/datastores/{store_id}").json()["status"] == "ready"
            targets = [{"subtask": "add", "prompt": "Q: 3+4\nA:", "completion": "7"}]
            answer = client.post(
                f"/v1/datastores/{store_id}/select", json={"targets": targets, "top_k": 5}
            )
            assert answer.status_code == 200, answer.text
            assert len(answer.json()["selected"]) == 5
    finally:
        torch.set_num_threads(threads)
    store = Datastore.open(settings.datastores_dir / store_id, verify=True)
    assert store.manifest.dtype == "int4" and store.feature_code is not None
    raw = np.load(store.root / store.manifest.shards["ckpt-1/adam"][0])
    assert raw.dtype == np.uint8 and raw.shape[1] == store.feature_code.row_bytes
