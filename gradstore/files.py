"""Crash-safe file writes and checksums.

Every artifact is written to a temporary name in its final directory, fsynced, renamed
over the target and the directory fsynced: a reader sees the old file or the whole new
one, never half of one, and a killed writer leaves only a ``.tmp-*`` file behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically; return its sha256."""
    atomic_write_file(path, lambda tmp: tmp.write_bytes(data))
    return sha256_bytes(data)


def atomic_write_file(path: str | Path, write: Callable[[Path], object]) -> None:
    """Let ``write`` fill a temporary file beside ``path``, then publish it atomically.

    For writers that take a path (FAISS, numpy memmaps) and would otherwise need the whole
    content in memory as bytes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: str | Path, value: Any) -> str:
    return atomic_write_bytes(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def atomic_save_npy(path: str | Path, array: np.ndarray) -> str:
    """Save an array as ``.npy`` atomically; same array ⇒ same bytes ⇒ same sha256."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return atomic_write_bytes(path, buffer.getvalue())


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def remove_stale_temporaries(root: str | Path, skip: tuple[str, ...] = ()) -> int:
    """Delete ``.tmp-*`` leftovers of killed writers below ``root``, except under the
    top-level directories ``skip`` (where writers may still be running); return how many."""
    removed = 0
    root = Path(root)
    for stale in root.rglob(".tmp-*"):
        if stale.relative_to(root).parts[0] in skip:
            continue
        if stale.is_file():
            stale.unlink(missing_ok=True)
            removed += 1
    return removed


def remove_tree(path: str | Path) -> None:
    """Remove a directory and everything under it; a missing one is fine (idempotent)."""
    shutil.rmtree(path, ignore_errors=True)
