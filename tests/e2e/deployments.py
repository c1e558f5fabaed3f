"""A data directory with a dataset and a ready store, and the environment of a server over it,
for tests that run ``gradstore api`` as a process (fuzzing, load)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from conftest import TINY_BUILD
from fastapi.testclient import TestClient

from gradstore.db.settings import Settings
from gradstore.migrations import upgrade
from gradstore.service.app import create_app
from gradstore.worker.runner import Worker

API_KEY = "test-key"


@dataclass
class Deployment:
    base: Path
    env: dict[str, str]
    dataset_id: str
    datastore_id: str
    model_path: str
    headers: dict[str, str]


def prepare(base: Path, pool_file: Path, model_dir: Path, database_url: str = "") -> Deployment:
    models = base / "models"
    shutil.copytree(model_dir, models / "tiny")
    settings = Settings(
        data_dir=base / "data",
        database_url=database_url,
        model_roots=str(models),
        api_keys=API_KEY,
    )
    settings.data_dir.mkdir()
    upgrade(settings.database_url)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with TestClient(create_app(settings), headers=headers) as client:
            with open(pool_file, "rb") as handle:
                dataset = client.post("/v1/datasets", data={"name": "pool"}, files={"file": handle})
            body = {"dataset_id": dataset.json()["id"], "model": {"path": str(models / "tiny")}}
            store = client.post("/v1/datastores", json=body | TINY_BUILD).json()
            Worker(settings).run(once=True)
            assert client.get(f"/v1/datastores/{store['id']}").json()["status"] == "ready"
    finally:
        torch.set_num_threads(threads)
    env = {
        "GRADSTORE_DATA_DIR": str(settings.data_dir),
        "GRADSTORE_DATABASE_URL": settings.database_url,
        "GRADSTORE_API_KEYS": API_KEY,
        "GRADSTORE_MODEL_ROOTS": str(models),
        "GRADSTORE_TORCH_THREADS": "1",
        "GRADSTORE_LOG_FORMAT": "json",
    }
    return Deployment(base, env, dataset.json()["id"], store["id"], str(models / "tiny"), headers)
