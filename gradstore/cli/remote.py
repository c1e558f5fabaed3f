"""``gradstore remote …``: the same jobs against a running service, through the HTTP client."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gradstore.cli.common import Explain, Fraction, Method, Options, Targets, TopK, read_targets
from gradstore.cli.flags import with_build_config
from gradstore.config import BuildConfig

if TYPE_CHECKING:
    from gradstore.client import GradstoreClient

remote_app = typer.Typer(
    rich_markup_mode=None, no_args_is_help=True, help="Talk to a gradstore service over HTTP."
)

Server = Annotated[str, typer.Option(envvar="GRADSTORE_SERVER", help="Service base URL.")]
ApiKey = Annotated[str | None, typer.Option(envvar="GRADSTORE_API_KEY", help="Bearer token.")]


@contextmanager
def _session(server: str, api_key: str | None) -> Iterator[GradstoreClient]:
    """A client whose API errors become one line on stderr and exit status 1 (imported
    here: httpx is not needed to parse a command line)."""
    from gradstore.client import GradstoreAPIError, GradstoreClient, GradstoreClientError

    try:
        with GradstoreClient(server, api_key=api_key) as client:
            yield client
    except GradstoreAPIError as error:
        typer.echo(f"error {error.status} {error.title}: {error.detail}", err=True)
        raise typer.Exit(1) from None
    except (GradstoreClientError, TimeoutError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None


@remote_app.command("upload")
def upload(
    file: Annotated[Path, typer.Option(help="JSONL pool to register.")],
    name: Annotated[str, typer.Option(help="Dataset name.")],
    server: Server = "http://127.0.0.1:8000",
    api_key: ApiKey = None,
) -> None:
    """Register a dataset; prints its record."""
    with _session(server, api_key) as client:
        typer.echo(client.create_dataset(name, path=file).model_dump_json())


@remote_app.command("build")
@with_build_config
def build(
    dataset_id: Annotated[str, typer.Option(help="Dataset to build from.")],
    model: Annotated[str, typer.Option(help="Model directory, as the service sees it.")],
    wait: Annotated[bool, typer.Option(help="Wait until ready, with a progress bar.")] = True,
    server: Server = "http://127.0.0.1:8000",
    api_key: ApiKey = None,
    config: BuildConfig = BuildConfig(),
) -> None:
    """Start a datastore build (and wait for it); prints the datastore record.

    The build flags are those of gradstore build, with the same defaults.
    """
    with _session(server, api_key) as client:
        store = client.create_datastore(dataset_id, model, config)
        for warning in store.warnings:
            typer.echo(f"warning: {warning}", err=True)
        if wait:
            store = client.wait_until_ready(store.id)
        typer.echo(store.model_dump_json())


@remote_app.command("report")
def report(
    datastore_id: Annotated[str, typer.Argument(help="The datastore.")],
    selection_id: Annotated[str, typer.Argument(help="A selection (its id is in the answer).")],
    out: Annotated[Path, typer.Option(help="HTML file to write.")],
    server: Server = "http://127.0.0.1:8000",
    api_key: ApiKey = None,
) -> None:
    """Write the HTML report of a selection made through the service."""
    with _session(server, api_key) as client:
        out.write_text(client.report(datastore_id, selection_id), encoding="utf-8")
    typer.echo(f"wrote {out}")


@remote_app.command("add-methods")
def add_methods(
    datastore_id: Annotated[str, typer.Argument(help="A ready datastore.")],
    methods: Annotated[list[str], typer.Option("--methods", help="Methods to add.")],
    wait: Annotated[bool, typer.Option(help="Wait until they answer.")] = True,
    server: Server = "http://127.0.0.1:8000",
    api_key: ApiKey = None,
) -> None:
    """Make a ready datastore serve more methods; prints the datastore record."""
    with _session(server, api_key) as client:
        store = client.add_methods(datastore_id, methods)
        if wait:
            store = client.wait_until_methods(store.id)
        typer.echo(store.model_dump_json())


@remote_app.command("select")
def select(
    datastore: Annotated[str, typer.Option("--datastore", "-s", help="Datastore ID.")],
    targets: Targets,
    top_k: TopK = None,
    fraction: Fraction = None,
    method: Method = "less",
    options: Options = None,
    explain: Explain = False,
    server: Server = "http://127.0.0.1:8000",
    api_key: ApiKey = None,
) -> None:
    """Rank the pool for the targets; prints the service's JSON answer."""
    examples = read_targets(targets)
    with _session(server, api_key) as client:
        result = client.select(
            datastore,
            examples,
            method=method,
            top_k=top_k,
            fraction=fraction,
            options=options,  # type: ignore[arg-type]  # the callback parsed it into a dict
            explain=explain,
        )
        typer.echo(result.model_dump_json())
