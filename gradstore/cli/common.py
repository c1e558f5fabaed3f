"""Options and checks that ``gradstore`` and ``gradstore remote`` share.

Every check here runs while click parses the command line, before a command imports torch
or the selection methods: a mistyped flag is answered at once, not after seconds of imports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from gradstore.examples import Example, read_jsonl

# The selection registry's names (``gradstore.selection.METHODS``, which a test keeps equal
# to this): importing the registry loads torch, too slow for parsing a command line.
METHOD_NAMES = (
    "less",
    "random",
    "bm25",
    "rds",
    "dsir",
    "in2core",
    "influence_distillation",
    "delift",
)
METHODS_TEXT = ", ".join(METHOD_NAMES)


def check_method(value: str) -> str:
    if value not in METHOD_NAMES:
        raise typer.BadParameter(f"unknown method {value!r}; choose one of: {METHODS_TEXT}")
    return value


def check_methods(values: list[str] | None) -> list[str] | None:
    for value in values or ():
        check_method(value)
    return values


def parse_options(value: str | None) -> dict[str, Any] | None:
    """``--options``: a JSON object, with the place of a syntax error named."""
    if value is None:
        return None
    try:
        options = json.loads(value)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(
            f"not JSON ({exc.msg} at character {exc.pos + 1}); write it like "
            '\'{"aggregate": "mean"}\' (keys and strings in double quotes)'
        ) from None
    if not isinstance(options, dict):
        raise typer.BadParameter('must be a JSON object, like \'{"aggregate": "mean"}\'')
    return options


def check_fraction(value: float | None) -> float | None:
    if value is not None and not 0 < value <= 1:
        raise typer.BadParameter(f"{value:g} is not a share of the pool: give 0 < x <= 1")
    return value


def check_store_dir(value: Path) -> Path:
    if not value.exists():
        raise typer.BadParameter(f"{value} does not exist")
    if not value.is_dir():
        raise typer.BadParameter(f"{value} is a file, not a datastore directory")
    if not (value / "manifest.json").exists():
        raise typer.BadParameter(
            f"{value} holds no finished datastore (no manifest.json): run the gradstore build "
            "that made it again, with the same flags, to finish it"
        )
    return value


def check_jsonl_file(value: Path | None) -> Path | None:
    if value is None:
        return None
    if not value.exists():
        raise typer.BadParameter(f"{value} does not exist")
    if value.is_dir():
        raise typer.BadParameter(f"{value} is a directory, not a JSONL file")
    return value


StoreDir = Annotated[
    Path,
    typer.Option("--store", "-s", callback=check_store_dir, help="Datastore directory."),
]
Method = Annotated[
    str,
    typer.Option(
        "--method", "-m", callback=check_method, help=f"Selection method: {METHODS_TEXT}."
    ),
]
Options = Annotated[
    str | None,
    typer.Option(
        "--options",
        "-o",
        callback=parse_options,  # the command receives the parsed dict
        metavar="JSON",
        help='Method options as a JSON object, e.g. \'{"aggregate": "mean"}\'.',
    ),
]
TopK = Annotated[
    int | None, typer.Option("--top-k", "-k", min=1, help="Number of examples to select.")
]
Fraction = Annotated[
    float | None,
    typer.Option(
        "--fraction", "-f", callback=check_fraction, help="Share of the pool to select (0 to 1]."
    ),
]
Targets = Annotated[
    Path,
    typer.Option(
        "--targets",
        "-t",
        callback=check_jsonl_file,
        help="Target examples (JSONL). A 'subtask' field groups them; targets without one "
        "form the group 'default'.",
    ),
]
Explain = Annotated[bool, typer.Option("--explain", help="Also say why each example was chosen.")]


def read_targets(path: Path) -> list[Example]:
    """The targets, with a warning when some name a subtask and others do not (those are
    ranked together as one subtask, 'default', which is rarely what was meant)."""
    targets = read_jsonl(path)
    missing = [t for t in targets if t.subtask is None]
    if missing and len(missing) < len(targets):
        typer.echo(
            f"warning: {len(missing)} of the {len(targets)} targets in {path} have no "
            f"'subtask' (e.g. {missing[0].id}); they are ranked together as subtask 'default'",
            err=True,
        )
    return targets
