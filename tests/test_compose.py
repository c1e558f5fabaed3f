"""The deployment files, checked without a Docker engine (none runs here).

docker-compose.yml is parsed with PyYAML and its variables interpolated as Compose does
(``${X}``, ``${X:-default}``, ``${X:?error}``); its commands are resolved against the real
``gradstore`` CLI and its environment against the service's settings; the Dockerfile is
parsed into instructions and checked against pyproject.toml.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import typer
import yaml
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from gradstore.cli import app as cli_app
from gradstore.db.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SECRETS = {"GRADSTORE_API_KEYS": "key-one,key-two", "POSTGRES_PASSWORD": "pw0123"}
_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


class MissingVariable(Exception):
    pass


def interpolate(value, env: dict[str, str]):
    """Compose's variable substitution, for the forms our compose file uses."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        present = name in env and (env[name] != "" or not (op or "").startswith(":"))
        if present:
            return env[name]
        if op in (":-", "-"):
            return arg
        if op in (":?", "?"):
            raise MissingVariable(f"{name}: {arg}")
        return ""

    return _VARIABLE.sub(substitute, value)


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(raw) -> dict:
    return interpolate(raw, SECRETS)["services"]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, rest = (pending + line).strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    return instructions


def resolve_cli(args: list[str]):
    """The command that ``gradstore *args`` runs, with its options parsed (it is not run).

    Raises on an unknown command or option and on a value of the wrong type.
    """
    command = typer.main.get_command(cli_app)
    args = list(args)
    while hasattr(command, "commands"):  # a group: descend by name (typer vendors click)
        name = args.pop(0)
        assert name in command.commands, f"gradstore has no command {name!r}"
        command = command.commands[name]
    command.make_context(name, args)
    return command


def test_the_four_services_and_their_named_volumes(raw, services):
    assert set(services) == {"postgres", "migrate", "api", "worker"}
    assert set(raw["volumes"]) == {"pgdata", "artifacts"}
    postgres = services["postgres"]
    assert postgres["image"] == "postgres:16"  # unless POSTGRES_IMAGE says otherwise
    assert "pgdata:/var/lib/postgresql/data" in postgres["volumes"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])


def test_start_order_waits_for_a_healthy_database_and_finished_migrations(services):
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["migrate"]["restart"] == "no"
    for name in ("api", "worker"):
        assert services[name]["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "migrate": {"condition": "service_completed_successfully"},
        }


def test_every_command_is_a_real_cli_command(services):
    for name in ("migrate", "api", "worker"):
        command = services[name]["command"]
        resolve_cli(command)
        result = CliRunner().invoke(cli_app, [*command[: 2 if name == "migrate" else 1], "--help"])
        assert result.exit_code == 0, result.output
    cmd = next(json.loads(a) for k, a in dockerfile_instructions() if k == "CMD")
    assert cmd == services["api"]["command"]
    resolve_cli(cmd)
    with pytest.raises(Exception, match="No such option"):  # the check itself can fail
        resolve_cli(["api", "--no-such-option"])
    with pytest.raises(Exception, match="valid integer"):
        resolve_cli(["api", "--port", "http"])
    with pytest.raises(AssertionError, match="no command 'serve-api'"):
        resolve_cli(["serve-api"])


def test_api_serves_on_its_published_port_with_a_real_health_route(services):
    api = services["api"]
    command = api["command"]
    port = command[command.index("--port") + 1]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert api["ports"] == [f"8000:{port}"]
    probe = " ".join(api["healthcheck"]["test"])
    assert f"http://127.0.0.1:{port}/healthz" in probe and "urllib" in probe

    from gradstore.service.app import create_app

    paths = create_app(Settings(data_dir=Path("unused"))).openapi()["paths"]
    assert "/healthz" in paths and "/readyz" in paths


def test_workers_scale_and_each_reserves_a_gpu(services):
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker
    assert worker["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    ]
    assert all("container_name" not in s for s in services.values())


def test_api_and_workers_share_the_artifact_root_and_read_only_models(services):
    for name in ("api", "worker", "migrate"):
        service = services[name]
        assert "artifacts:/data" in service["volumes"]
        assert service["environment"]["GRADSTORE_DATA_DIR"] == "/data"
        assert "./models:/models:ro" in service["volumes"]
    assert services["api"]["image"] == services["worker"]["image"] == services["migrate"]["image"]
    models = interpolate(
        yaml.safe_load((ROOT / "docker-compose.yml").read_text()),
        SECRETS | {"GRADSTORE_MODELS_DIR": "/srv/models"},
    )["services"]["worker"]["volumes"]
    assert "/srv/models:/models:ro" in models


def test_api_keys_and_database_password_are_required(raw):
    for missing, message in (
        ("GRADSTORE_API_KEYS", "set an API key"),
        ("POSTGRES_PASSWORD", "set a database password"),
    ):
        env = {k: v for k, v in SECRETS.items() if k != missing}
        with pytest.raises(MissingVariable, match=message):
            interpolate(raw, env)
        with pytest.raises(MissingVariable):
            interpolate(raw, env | {missing: ""})


def test_environment_matches_the_service_settings(services):
    api_env = services["api"]["environment"]
    assert api_env["GRADSTORE_API_KEYS"] == SECRETS["GRADSTORE_API_KEYS"]
    assert api_env["GRADSTORE_ENVIRONMENT"] == "production"
    assert "GRADSTORE_API_KEYS" not in services["worker"]["environment"]
    fields = {f"GRADSTORE_{name.upper()}" for name in Settings.model_fields}
    for service in ("migrate", "api", "worker"):
        env = services[service]["environment"]
        assert {k for k in env if k.startswith("GRADSTORE_")} <= fields, service
        url = make_url(env["GRADSTORE_DATABASE_URL"])
        assert (url.drivername, url.host, url.password) == (
            "postgresql+psycopg",
            "postgres",
            SECRETS["POSTGRES_PASSWORD"],
        )
        url.get_dialect()  # the driver is installed
    settings = Settings(**{k.removeprefix("GRADSTORE_").lower(): v for k, v in api_env.items()})
    assert settings.keys == {"key-one", "key-two"} and settings.data_dir == Path("/data")


def test_dockerfile_builds_one_non_root_image_for_every_role(raw):
    instructions = dockerfile_instructions()
    args = dict(a.split("=", 1) for k, a in instructions if k == "ARG")  # name -> default
    assert args["BASE_IMAGE"].startswith("python:3.11")
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["TORCH_VERSION"])
    assert [a for k, a in instructions if k == "FROM"] == ["${BASE_IMAGE}"]
    assert set(raw["x-gradstore"]["build"]["args"]) <= set(args)

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    entrypoint = next(json.loads(a) for k, a in instructions if k == "ENTRYPOINT")
    assert entrypoint == list(pyproject["project"]["scripts"]) == ["gradstore"]
    user = [a for k, a in instructions if k == "USER"]
    assert user and user[-1] not in ("root", "0")
    assert ("EXPOSE", "8000") in instructions
    runs = " ".join(" ; ".join(a for k, a in instructions if k == "RUN").split())
    assert '"torch==${TORCH_VERSION}"' in runs
    assert '--constraint constraints.txt ".[${GRADSTORE_EXTRAS}]"' in runs
    extras = pyproject["project"]["optional-dependencies"]
    assert set(args["GRADSTORE_EXTRAS"].split(",")) == {"service", "cpu"} <= set(extras)
    assert ("COPY", "constraints.txt ./") in instructions

    copied = {a.split()[0] for k, a in instructions if k == "COPY"}
    copied |= {p for k, a in instructions if k == "COPY" for p in a.split()[:-1]}
    for folder in ["gradstore", *pyproject["tool"]["setuptools"]["package-dir"].values()]:
        assert folder in copied, f"source folder {folder} is not copied into the image"
    assert {"pyproject.toml", "README.md"} <= copied


def test_dockerignore_keeps_data_out_and_sources_in():
    patterns = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "data", ".gradstore", ".pytest_cache", "**/__pycache__"} <= patterns
    for needed in ("gradstore", "service", "worker", "db", "migrations", "constraints.txt"):
        assert needed not in patterns


class _ComposeLoader(yaml.SafeLoader):
    """PyYAML plus Compose's merge tags (!reset, !override), kept as markers."""


_ComposeLoader.add_constructor("!reset", lambda loader, node: ("!reset", None))
_ComposeLoader.add_constructor(
    "!override", lambda loader, node: ("!override", loader.construct_sequence(node))
)


def test_host_network_override_puts_every_service_on_the_host_network():
    override = yaml.load(
        (ROOT / "deploy" / "compose.host-network.yml").read_text(), Loader=_ComposeLoader
    )["services"]
    assert set(override) == {"postgres", "migrate", "api", "worker"}
    assert all(s["network_mode"] == "host" for s in override.values())
    assert override["api"]["ports"] == ("!reset", None)  # host mode publishes nothing
    assert override["worker"]["deploy"] == ("!reset", None)  # CPU workers: no GPU reserved
    assert "listen_addresses=127.0.0.1" in override["postgres"]["command"]


def test_addresses_ports_images_and_build_network_are_parameters(raw):
    env = SECRETS | {
        "POSTGRES_HOST": "127.0.0.1",
        "POSTGRES_PORT": "55432",
        "POSTGRES_IMAGE": "local/postgres:15",
        "GRADSTORE_API_HOST": "127.0.0.1",
        "GRADSTORE_API_PORT": "58000",
        "GRADSTORE_BUILD_NETWORK": "host",
        "TORCH_INDEX_URL": "",
        "WHEELS_URL": "http://127.0.0.1:9/",
    }
    services = interpolate(raw, env)["services"]
    url = make_url(services["worker"]["environment"]["GRADSTORE_DATABASE_URL"])
    assert (url.host, url.port) == ("127.0.0.1", 55432)
    assert services["postgres"]["image"] == "local/postgres:15"
    assert services["postgres"]["environment"]["PGPORT"] == "55432"
    api = services["api"]
    assert api["command"] == ["api", "--host", "127.0.0.1", "--port", "58000"]
    assert "http://127.0.0.1:58000/healthz" in " ".join(api["healthcheck"]["test"])
    build = services["api"]["build"]
    assert build["network"] == "host"
    assert build["args"]["TORCH_INDEX_URL"] == ""  # `-`, not `:-`: empty stays empty
    assert build["args"]["WHEELS_URL"] == "http://127.0.0.1:9/"
    defaults = interpolate(raw, SECRETS)["services"]
    assert defaults["api"]["build"]["args"]["TORCH_INDEX_URL"].endswith("/whl/cpu")
    assert make_url(defaults["api"]["environment"]["GRADSTORE_DATABASE_URL"]).port == 5432


def test_local_postgres_image_honours_the_variables_compose_sets(services):
    entrypoint = (ROOT / "deploy" / "postgres" / "entrypoint.sh").read_text()
    for name in services["postgres"]["environment"]:
        if name.startswith("POSTGRES_"):
            assert name in entrypoint, f"deploy/postgres ignores {name}"
    dockerfile = (ROOT / "deploy" / "postgres" / "Dockerfile").read_text()
    assert "PGDATA=/var/lib/postgresql/data" in dockerfile
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert (ROOT / "deploy" / "postgres" / "entrypoint.sh").stat().st_mode & 0o111
