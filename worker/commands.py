"""The ``gradstore worker`` command, registered through the ``gradstore.cli`` entry points."""

from __future__ import annotations

import signal
import threading
from typing import Annotated

import typer

from gradstore.extras import needs_extra


@needs_extra("service")
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
    from gradstore.db.logs import configure_logging
    from gradstore.db.settings import Settings, apply_torch_threads
    from gradstore.worker.runner import Worker

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    apply_torch_threads(settings)
    if poll_interval is not None:
        settings = settings.model_copy(update={"poll_seconds": poll_interval})
    Worker(settings, parent_pid=parent_pid).run(once=once, stop=stop)


def register(app: typer.Typer) -> None:
    app.command()(worker)
