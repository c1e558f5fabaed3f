"""One build configuration everywhere: the same request gives the same stored config from
``gradstore build``, ``gradstore remote build``, the HTTP API and the Python client.

The CLI's flags are generated from ``BuildConfig`` and the API request embeds it; here the
four entry points are driven with the same settings and their stored configs compared.
"""

from __future__ import annotations

import json
import threading

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

import gradstore.build
from gradstore.api_models import DatastoreCreate
from gradstore.cli import app
from gradstore.cli.flags import ALIASES, config_options
from gradstore.client import GradstoreClient
from gradstore.config import BuildConfig
from gradstore.db.engine import make_engine, make_sessionmaker
from gradstore.db.models import Datastore
from gradstore.db.settings import Settings
from gradstore.migrations import upgrade
from gradstore.service.app import create_app

# (request as JSON fields, the same as CLI flags)
CASES = [
    ({}, []),
    ({"lora": {"r": 8}}, ["--lora-r", "8"]),  # alpha follows r (4·r) on every path
    (
        {
            "lora": {"r": 4, "alpha": 6, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
            "warmup": {"learning_rate": 0.001, "gradient_accumulation": 1, "warmup_ratio": 0.1},
            "projection": {"dim": 256, "seed": 3, "kind": "rademacher"},
            "max_seq_len": 64,
            "template": "tulu",
            "batch_size": 4,
            "dtype": "float32",
            "shard_size": 12,
            "index_factory": "SQfp16",
            "pool_features": ["adam", "sgd"],
        },
        [
            *("--lora-r", "4", "--lora-alpha", "6", "--lora-dropout", "0"),
            *("--lora-target-modules", "q_proj", "--lora-target", "v_proj"),
            *("--learning-rate", "1e-3", "--warmup-gradient-accumulation", "1"),
            *("--warmup-ratio", "0.1", "--projection-dim", "256", "--projection-seed", "3"),
            *("--projection-kind", "rademacher", "--max-seq-len", "64", "--template", "tulu"),
            *("--batch-size", "4", "--dtype", "float32", "--shard-size", "12"),
            *("--index-factory", "SQfp16", "--pool-features", "adam", "--pool-features", "sgd"),
        ],
    ),
]


class Captured(Exception):
    """Raised in place of the build, carrying the config the CLI would build with."""


@pytest.fixture
def captured_cli_config(monkeypatch, tmp_path):
    def fake_build_all(out, dataset, model, config, warmup_from=(), **_):
        raise Captured(config)

    monkeypatch.setattr(gradstore.build, "build_all", fake_build_all)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pool.jsonl").write_text("")  # --dataset is checked while parsing

    def run(args: list[str]) -> dict:
        argv = ["build", "--dataset", "pool.jsonl", "--model", "m", "--out", "s", *args]
        result = CliRunner().invoke(app, argv)
        assert isinstance(result.exception, Captured), result.output
        return result.exception.args[0].model_dump(mode="json")

    return run


@pytest.fixture
def live_service(tmp_path, toy_pool_file):
    """The real app on SQLite over uvicorn; returns (url, dataset id, stored configs)."""
    import uvicorn

    settings = Settings(data_dir=tmp_path / "data")
    settings.data_dir.mkdir(parents=True)
    upgrade(settings.database_url)
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(1000):
        if server.started:
            break
        threading.Event().wait(0.01)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    with GradstoreClient(url) as client:
        dataset_id = client.create_dataset("pool", path=toy_pool_file).id
    sessions = make_sessionmaker(make_engine(settings.database_url))

    def stored(datastore_id: str) -> dict:
        with sessions() as session:
            return session.scalar(select(Datastore.config).where(Datastore.id == datastore_id))

    yield url, dataset_id, stored
    server.should_exit = True
    thread.join(timeout=10)


@pytest.mark.parametrize(("fields", "flags"), CASES)
def test_one_request_one_stored_config_from_every_entry_point(
    fields, flags, captured_cli_config, live_service, tiny_model_dir, tmp_path
):
    url, dataset_id, stored = live_service
    from_cli = captured_cli_config(flags)

    config_file = tmp_path / "build.json"
    config_file.write_text(json.dumps(fields))
    from_file = captured_cli_config(["--config", str(config_file)])

    with GradstoreClient(url) as client:
        from_client = client.create_datastore(dataset_id, tiny_model_dir, **fields)
        raw = client._http.post(
            "/v1/datastores",
            json={"dataset_id": dataset_id, "model": {"path": str(tiny_model_dir)}, **fields},
        )
        assert raw.status_code == 202, raw.text
    remote = CliRunner().invoke(
        app,
        [
            *("remote", "build", "--server", url, "--no-wait"),
            *("--dataset-id", dataset_id, "--model", str(tiny_model_dir), *flags),
        ],
    )
    assert remote.exit_code == 0, remote.output
    from_remote = json.loads(remote.stdout)  # warnings go to stderr

    expected = BuildConfig.model_validate(fields).model_dump(mode="json")
    assert from_cli == from_file == expected
    assert stored(from_client.id) == stored(raw.json()["id"]) == stored(from_remote["id"])
    assert stored(from_client.id) == expected
    assert from_client.config is not None
    assert from_client.config.model_dump(mode="json") == expected  # the API shows it too
    assert expected["lora"]["alpha"] == fields.get("lora", {}).get(
        "alpha", 4 * expected["lora"]["r"]
    )


def test_every_configuration_field_is_a_flag_and_a_request_field():
    options = config_options()
    leaves = {o.path for o in options}
    assert ("lora", "alpha") in leaves and ("projection", "kind") in leaves
    assert ("max_seq_len",) in leaves and ("pool_features",) in leaves
    flags = [o.flag for o in options]
    assert len(flags) == len(set(flags)) == len(leaves)
    assert {"--lora-r", "--warmup-ratio", "--warmup-learning-rate", "--max-seq-len"} <= set(flags)
    assert set(ALIASES) <= leaves
    request_fields = set(DatastoreCreate.model_fields)
    assert request_fields - set(BuildConfig.model_fields) == {
        "dataset_id",
        "model",
        "warmup_from",
        "options",
    }


def test_flag_errors_name_the_flag_and_unknown_choices_are_refused(captured_cli_config):
    for args, flag in (
        (["--lora-r", "0"], "--lora-r"),
        (["--warmup-fraction", "2"], "--warmup-fraction"),
        (["--projection-kind", "gaussian"], "--projection-kind"),
        (["--config", '{"lora": {"rank": 3}}'], "--config"),
    ):
        result = CliRunner().invoke(
            app, ["build", "--dataset", "pool.jsonl", "--model", "m", "--out", "o", *args]
        )
        assert result.exit_code == 2, result.output
        assert flag in result.output, result.output


def test_flags_override_the_config_file_field_by_field(captured_cli_config, tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"lora": {"r": 4, "dropout": 0.0}, "options": {"shard_size": 7}}))
    config = captured_cli_config(["--config", str(path), "--lora-r", "16"])
    assert config["lora"] == {"r": 16, "alpha": 64.0, "dropout": 0.0, "target_modules": None}
    assert config["shard_size"] == 7  # the API's old "options" shape is still read


def test_the_old_options_field_is_merged_and_conflicts_are_refused():
    base = {"dataset_id": "d", "model": {"path": "/m"}}
    old = DatastoreCreate.model_validate(base | {"options": {"shard_size": 7, "dtype": "float32"}})
    assert old.build_config().shard_size == 7 and old.build_config().dtype == "float32"
    with pytest.raises(ValueError, match="shard_size given both"):
        DatastoreCreate.model_validate(base | {"shard_size": 3, "options": {"shard_size": 7}})
    with pytest.raises(ValueError, match="unknown build settings bogus"):
        DatastoreCreate.model_validate(base | {"options": {"bogus": 1}})
