"""An app on a migrated SQLite or (when configured) PostgreSQL database, for hostile requests.

Loaded with ``pytest_plugins`` (a second conftest.py would shadow ``import conftest``). The
test client does not re-raise server errors: a 500 is an answer to count, like any other.
"""

from __future__ import annotations

import shutil

import pytest
from fastapi.testclient import TestClient

from gradstore.db.settings import Settings
from gradstore.migrations import upgrade
from gradstore.service.app import create_app

PROBLEM = "application/problem+json"


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'api.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    upgrade(url)
    return url


@pytest.fixture
def model_root(tmp_path, tiny_model_dir):
    """A model root holding a copy of the tiny model at ``tiny``."""
    root = tmp_path / "models"
    shutil.copytree(tiny_model_dir, root / "tiny")
    return root


@pytest.fixture
def hostile_settings(tmp_path, backend_url, model_root) -> Settings:
    roots = str(model_root)
    settings = Settings(data_dir=tmp_path / "data", database_url=backend_url, model_roots=roots)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings


@pytest.fixture
def api(hostile_settings):
    with TestClient(create_app(hostile_settings), raise_server_exceptions=False) as client:
        yield client


def assert_problem(response, status: int, fragment: str = "", slug: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    body = response.json()
    assert body["status"] == status and fragment in body["detail"], body
    assert body["request_id"] == response.headers["x-request-id"]
    if slug is not None:
        assert body["type"] == f"/problems/{slug}", body
    return body
