"""Service commands of the ``gradstore`` CLI: serve (embedded), api, worker, db upgrade."""

from __future__ import annotations

import os
import signal
import socket
import threading
from pathlib import Path
from typing import Annotated

import typer

db_app = typer.Typer(no_args_is_help=True, help="Database schema (Alembic).")


def _settings(data_dir: Path | None = None):
    from service.settings import Settings

    if data_dir is not None:
        os.environ["GRADSTORE_DATA_DIR"] = str(data_dir)
    return Settings()


def _logging(settings) -> None:
    from service.logs import configure_logging

    configure_logging(settings.log_format, settings.log_level)


def _run_api(app, host: str, port: int) -> None:
    """uvicorn with our log lines only: its own access log would lack the request id."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False)


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply the migrations to GRADSTORE_DATABASE_URL (or the embedded SQLite file)."""
    from migrations import upgrade

    settings = _settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url, revision)
    typer.echo(f"database at {settings.database_url.split('@')[-1]} is at {revision}")


def api(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
) -> None:
    """Run the HTTP API only (the Compose api service; workers run separately)."""
    from service.app import create_app

    settings = _settings()
    _logging(settings)
    _run_api(create_app(settings), host, port)


def worker(
    once: Annotated[bool, typer.Option(help="Exit when no work is left.")] = False,
    poll_interval: Annotated[
        float | None,
        typer.Option(help="Seconds between looks for work when idle (GRADSTORE_POLL_SECONDS)."),
    ] = None,
    parent_pid: Annotated[
        int | None, typer.Option(hidden=True, help="Exit when this parent process is gone.")
    ] = None,
) -> None:
    """Claim and run build units from the database until stopped (SIGTERM: after this unit)."""
    from service.settings import apply_torch_threads
    from worker.runner import Worker

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    settings = _settings()
    _logging(settings)
    apply_torch_threads(settings)
    if poll_interval is not None:
        settings = settings.model_copy(update={"poll_seconds": poll_interval})
    Worker(settings, parent_pid=parent_pid).run(once=once, stop=stop)


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    data_dir: Annotated[Path | None, typer.Option(help="Artifact root and SQLite home.")] = None,
    workers: Annotated[
        int, typer.Option(min=0, help="Worker processes to start beside the API.")
    ] = 1,
) -> None:
    """Embedded mode: migrations, the API and worker processes, SQLite by default."""
    from gradstore.threads import THREADS_ENV, threads_per_process
    from migrations import upgrade
    from service.app import create_app
    from service.db import make_engine, make_sessionmaker
    from service.embedded import WorkerProcesses
    from worker.queue import release_dead_local_leases

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
    app.command()(serve)
    app.command()(api)
    app.command()(worker)
    app.add_typer(db_app, name="db")
