"""Optional dependency groups (pip extras) and a clear error when one is missing.

The core library needs neither the service stack nor a particular FAISS wheel; the
commands that do check for their extra first and say what to install.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer

# Import names of what each extra installs (pip names differ: python-multipart, faiss-cpu).
EXTRAS: dict[str, tuple[str, ...]] = {
    "service": (
        "fastapi",
        "uvicorn",
        "sqlalchemy",
        "alembic",
        "prometheus_client",
        "pydantic_settings",
    ),
    "cpu or gpu": ("faiss",),
    "report": ("matplotlib",),
}

P = ParamSpec("P")
R = TypeVar("R")


def missing_modules(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here."""
    return [name for name in EXTRAS[extra] if not _importable(name)]


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def install_hint(extra: str) -> str:
    if extra == "cpu or gpu":
        return "pip install 'gradstore[cpu]' (or 'gradstore[gpu]' with CUDA)"
    return f"pip install 'gradstore[{extra}]'"


def require_extra(extra: str, what: str) -> None:
    """Raise a ``MissingExtraError`` naming ``what`` needs ``extra`` when it is missing."""
    missing = missing_modules(extra)
    if missing:
        from gradstore.errors import MissingExtraError

        raise MissingExtraError(
            f"{what} needs the {extra} extra (missing: {', '.join(missing)}); {install_hint(extra)}"
        )


def needs_extra(extra: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a CLI command: exit 1 with an install hint when ``extra`` is missing."""

    def decorate(command: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(command)
        def checked(*args: P.args, **kwargs: P.kwargs) -> R:
            missing = missing_modules(extra)
            if missing:
                typer.echo(
                    f"error: `{command.__name__}` needs the {extra} extra "
                    f"(missing: {', '.join(missing)}); {install_hint(extra)}",
                    err=True,
                )
                raise typer.Exit(1)
            return command(*args, **kwargs)

        return checked

    return decorate
