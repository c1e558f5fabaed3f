"""Model roots and the checks a build request gets before anything is queued."""

from __future__ import annotations

import json
import shutil

import httpx
import pytest
from api_fixtures import assert_problem
from conftest import TINY_BUILD
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from gradstore.cli import app as cli_app
from gradstore.db.settings import Settings
from gradstore.migrations import upgrade
from gradstore.service.app import create_app

pytest_plugins = ["api_fixtures"]


@pytest.fixture
def sqlite_api(tmp_path, model_root):
    settings = Settings(data_dir=tmp_path / "data", model_roots=str(model_root))
    settings.data_dir.mkdir(parents=True)
    upgrade(settings.database_url)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def pool(sqlite_api, toy_pool_file) -> str:
    with open(toy_pool_file, "rb") as handle:
        answer = sqlite_api.post("/v1/datasets", data={"name": "p"}, files={"file": handle})
    return answer.json()["id"]


def build(client, dataset_id: str, path, **extra):
    body = {"dataset_id": dataset_id, "model": {"path": str(path)}} | TINY_BUILD | extra
    return client.post("/v1/datastores", json=body)


def outside_answer(response) -> tuple:
    body = assert_problem(response, 403, "inside the model roots", "path-outside-model-roots")
    return body["title"], body["detail"]


def test_paths_outside_the_roots_are_refused_alike(sqlite_api, pool, model_root, tmp_path):
    """Existing or not, directory or file, plain or through a link: one identical 403."""
    escape = model_root / "escape"
    escape.symlink_to(tmp_path, target_is_directory=True)
    answers = {
        outside_answer(build(sqlite_api, pool, path))
        for path in (
            "/etc",
            "/etc/passwd",
            "/no/such/directory",
            tmp_path,  # exists, and holds the data directory
            model_root.parent / "models-not",  # a sibling whose name starts like the root
            f"{model_root}/../data",
            escape,  # a link inside the root to a directory outside
            escape / "data",
        )
    }
    assert len(answers) == 1, answers  # nothing tells them apart
    warmup = build(sqlite_api, pool, model_root / "tiny", warmup_from=["/etc"])
    assert_problem(warmup, 403, "warmup_from[0] must be a directory inside the model roots")
    assert sqlite_api.get("/v1/datastores").json()["count"] == 0


def test_inside_the_roots_a_caller_learns_what_is_wrong(sqlite_api, pool, model_root):
    assert_problem(build(sqlite_api, pool, model_root / "missing"), 422, "not a local directory")
    (model_root / "empty").mkdir()
    assert_problem(build(sqlite_api, pool, model_root / "empty"), 422, "has no config.json")
    accepted = build(sqlite_api, pool, model_root / "tiny")
    assert accepted.status_code == 202, accepted.text
    assert accepted.headers["location"] == f"/v1/datastores/{accepted.json()['id']}"


def test_production_needs_model_roots(tmp_path):
    with pytest.raises(ValueError, match="GRADSTORE_MODEL_ROOTS must be set in production"):
        Settings(data_dir=tmp_path, environment="production", api_keys="k")
    with pytest.raises(ValueError, match="must be absolute"):
        Settings(data_dir=tmp_path, model_roots="relative/models")
    settings = Settings(
        data_dir=tmp_path, environment="production", api_keys="k", model_roots="/a:/b"
    )
    assert [str(r) for r in settings.roots] == ["/a", "/b"]


def test_what_would_fail_later_fails_at_submission(sqlite_api, pool, model_root, tmp_path):
    tiny = model_root / "tiny"
    cases = [
        ({"options": {"index_factory": "IVF4,Nonsense"}}, "FAISS cannot build index"),
        ({"lora": {"r": 4, "alpha": 16, "target_modules": ["w_qkv"]}}, "match no module"),
        ({"options": {"template": "chat_template"}}, "has no chat template"),
    ]
    for extra, fragment in cases:
        assert_problem(build(sqlite_api, pool, tiny, **extra), 422, fragment)
    not_a_checkpoint = model_root / "ckpt-1"
    not_a_checkpoint.mkdir()
    (not_a_checkpoint / "adapter_config.json").write_text("{}")
    answer = build(sqlite_api, pool, tiny, warmup_from=[str(not_a_checkpoint)])
    assert_problem(answer, 422, "'ckpt-1' has no adapter weights")
    broken = model_root / "broken"
    shutil.copytree(tiny, broken)
    (broken / "config.json").write_text('{"model_type": "llama", "hidden_size": "x"}')
    assert_problem(build(sqlite_api, pool, broken), 422)
    assert sqlite_api.get("/v1/datastores").json()["count"] == 0


def test_a_useless_warmup_is_said_plainly_everywhere(sqlite_api, pool, model_root, monkeypatch):
    """LESS defaults on a small pool: a few optimizer steps; the user is told, with numbers."""
    short = {"fraction": 0.05, "epochs": 4, "batch_size": 8, "gradient_accumulation": 16}
    answer = build(sqlite_api, pool, model_root / "tiny", warmup=short)
    assert answer.status_code == 202, answer.text
    (warning,) = answer.json()["warnings"]
    assert "only 4 optimizer steps" in warning and "Raise warmup.fraction" in warning
    stored = sqlite_api.get(f"/v1/datastores/{answer.json()['id']}").json()
    assert stored["warnings"] == [warning]
    fine = build(sqlite_api, pool, model_root / "tiny")
    assert fine.json()["warnings"] == []

    # the remote CLI prints it on stderr (the client talks to this app in process)
    from gradstore import client as client_module

    def forward(request: httpx.Request) -> httpx.Response:
        answer = sqlite_api.request(
            request.method, request.url.path, content=request.content, headers=request.headers
        )
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    real_client = client_module.GradstoreClient

    def client(server, api_key=None):
        return real_client(server, api_key=api_key, transport=httpx.MockTransport(forward))

    monkeypatch.setattr(client_module, "GradstoreClient", client)  # the CLI imports it late
    config = json.dumps({k: v for k, v in TINY_BUILD.items()} | {"warmup": short})
    args = ["remote", "build", "--dataset-id", pool, "--model", str(model_root / "tiny")]
    result = CliRunner().invoke(cli_app, [*args, "--config", config, "--no-wait"])
    assert result.exit_code == 0, result.output
    assert "warning: the warmup trains on" in result.stderr
    assert "only 4 optimizer steps" in result.stderr
