"""Model and warmup directories a request may name: inside GRADSTORE_MODEL_ROOTS, or refused.

The answer for a path outside the roots is the same 403 whether it exists or not, and is
decided before the path is looked at when its plain spelling already leaves the roots; only
inside a root does a caller learn whether a directory is there. Symlinks are followed, so a
link inside a root that points outside is outside.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from gradstore.errors import GradstoreError, InvalidInputError


class ForbiddenPathError(GradstoreError):
    """A model or warmup directory outside GRADSTORE_MODEL_ROOTS (its existence untold)."""

    status = 403
    title = "Path outside the model roots"


MAX_PATH = 4096  # PATH_MAX on Linux
MAX_NAME = 255  # NAME_MAX


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def check_spelling(raw: str, field: str) -> None:
    """Faults of the string itself, which say nothing about the host's files."""
    if "\x00" in raw:
        raise InvalidInputError(f"{field} contains a NUL character")
    if not raw.strip():
        raise InvalidInputError(f"{field} is empty")
    if len(os.fsencode(raw)) > MAX_PATH:
        raise InvalidInputError(f"{field} is longer than {MAX_PATH} bytes")
    if any(len(os.fsencode(part)) > MAX_NAME for part in raw.split("/")):
        raise InvalidInputError(f"{field} has a component longer than {MAX_NAME} bytes")
    if not os.path.isabs(raw):
        raise InvalidInputError(
            f"{field} must be an absolute path to a local directory (nothing is fetched from "
            "a model hub)"
        )


def resolve_directory(raw: str, roots: Sequence[Path], field: str = "model.path") -> Path:
    """The real directory ``raw`` names, if it is allowed and is one; else 403 or 422."""
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(f"{field} is not valid Unicode") from None
    check_spelling(raw, field)
    if roots and not _inside(Path(os.path.normpath(raw)), roots):
        raise _outside(field, roots)
    real = Path(os.path.realpath(raw))
    if roots and not _inside(real, roots):
        raise _outside(field, roots)
    try:
        is_dir = real.is_dir()
    except OSError:  # ELOOP, EACCES, ENAMETOOLONG after resolution, ...
        is_dir = False
    if not is_dir:
        raise InvalidInputError(f"{field} {raw!r} is not a local directory")
    return real


def _outside(field: str, roots: Sequence[Path]) -> ForbiddenPathError:
    allowed = ", ".join(str(r) for r in roots)
    return ForbiddenPathError(f"{field} must be a directory inside the model roots ({allowed})")
