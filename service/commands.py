"""Service commands of the ``gradstore`` CLI: serve (embedded), api, db upgrade.

Registered through the ``gradstore.cli`` entry point group, so the core CLI never imports
the service; every command checks that the ``service`` extra is installed before it runs.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated

import typer

from gradstore.extras import needs_extra

db_app = typer.Typer(rich_markup_mode=None, no_args_is_help=True, help="Database schema (Alembic).")


def _settings(data_dir: Path | None = None):
    from gradstore.db.settings import Settings

    if data_dir is not None:
        os.environ["GRADSTORE_DATA_DIR"] = str(data_dir)
    return Settings()


def _logging(settings) -> None:
    from gradstore.db.logs import configure_logging

    configure_logging(settings.log_format, settings.log_level)


def check_port_free(host: str, port: int) -> None:
    """Exit with one line when the port is taken (uvicorn would say it in a log line)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            typer.echo(
                f"error: cannot listen on {host}:{port} ({exc.strerror}); stop what uses it "
                "(another gradstore serve?) or choose another --port",
                err=True,
            )
            raise typer.Exit(1) from None


def _run_api(app, host: str, port: int) -> None:
    """uvicorn with our log lines only: its own access log would lack the request id."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False)


@db_app.command("upgrade")
@needs_extra("service")
def db_upgrade(revision: str = "head") -> None:
    """Apply the migrations to GRADSTORE_DATABASE_URL (or the embedded SQLite file)."""
    from gradstore.migrations import upgrade

    settings = _settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url, revision)
    typer.echo(f"database at {settings.database_url.split('@')[-1]} is at {revision}")


def api(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
) -> None:
    """Run the HTTP API only (the Compose api service; workers run separately)."""
    from gradstore.service.app import create_app

    check_port_free(host, port)
    settings = _settings()
    _logging(settings)
    _run_api(create_app(settings), host, port)


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    data_dir: Annotated[Path | None, typer.Option(help="Artifact root and SQLite home.")] = None,
    workers: Annotated[
        int, typer.Option(min=0, help="Worker processes to start beside the API.")
    ] = 1,
) -> None:
    """Embedded mode: migrations, the API and worker processes, SQLite by default."""
    from gradstore.db.engine import make_engine, make_sessionmaker
    from gradstore.db.queue import release_dead_local_leases
    from gradstore.migrations import upgrade
    from gradstore.service.app import create_app
    from gradstore.service.embedded import WorkerProcesses
    from gradstore.threads import THREADS_ENV, threads_per_process

    check_port_free(host, port)
    settings = _settings(data_dir)
    _logging(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if not settings.torch_threads:  # the API and the workers divide this host's cores
        worker_threads = threads_per_process(max(1, workers))
        api_threads = threads_per_process(workers + 1)
        settings = settings.model_copy(update={"torch_threads": api_threads})
        os.environ[THREADS_ENV] = str(worker_threads)  # inherited by the worker processes
    upgrade(settings.database_url)
    factory = make_sessionmaker(make_engine(settings.database_url))
    freed = release_dead_local_leases(factory, socket.gethostname())
    if freed:
        typer.echo(f"released {freed} unit(s) leased by workers of a previous run")
    children = WorkerProcesses(workers).start()
    try:
        _run_api(create_app(settings), host, port)
    finally:
        children.stop()


def register(app: typer.Typer) -> None:
    """Add serve, api and db to the ``gradstore`` CLI (an entry point of group gradstore.cli)."""
    app.command()(needs_extra("service")(serve))
    app.command()(needs_extra("service")(api))
    app.add_typer(db_app, name="db")
