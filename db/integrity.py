"""Integrity of ready datastores: full checksums in the background, a cheap fingerprint per query.

Reading every byte of a store (tens of GB) cannot happen inside a request, and sizes alone
miss a same-size overwrite. So a worker verifies the whole store (every sha256 of its
manifest, and the model's content hash) after the build and then periodically, and records
with the result a *fingerprint*: a digest of what ``stat`` says of every file at that
moment (inode, size, modification and change time for the store's files; size and
modification time for the model's, which may be a per-host copy). Any write to a file moves
its change time, which no ``touch`` can set back, so a query that finds the same
fingerprint before and after it ran has read exactly the bytes that were verified. A
different fingerprint means a file changed: the store is marked failed with the reason and
nothing it answered during the change is returned.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from gradstore.errors import ManifestMismatchError
from gradstore.features.modeling import model_content_hash
from gradstore.store.datastore import MANIFEST, Datastore, read_manifest


def _model_files(model_dir: Path) -> list[Path]:
    return sorted(p for p in model_dir.rglob("*") if p.is_file())


def fingerprint(store: Datastore) -> str:
    """A digest of the stat of every file a query of ``store`` reads (O(files), no bytes)."""
    digest = hashlib.sha256()
    for relative in sorted([*store.manifest.files, MANIFEST]):
        try:
            stat = os.stat(store.root / relative)
        except OSError:
            raise ManifestMismatchError(f"datastore file {relative} is missing") from None
        fields = (relative, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        digest.update(("\0".join(map(str, fields)) + "\n").encode())
    if store.manifest.model is None:  # built without a model
        return digest.hexdigest()
    model_dir = Path(store.manifest.model.path)
    try:
        for path in _model_files(model_dir):
            stat = path.stat()
            model_fields = (path.relative_to(model_dir).as_posix(), stat.st_size, stat.st_mtime_ns)
            digest.update(("model\0" + "\0".join(map(str, model_fields)) + "\n").encode())
    except OSError:
        raise ManifestMismatchError("the datastore's model directory cannot be read") from None
    return digest.hexdigest()


def verify(root: str | Path) -> str:
    """Every byte against the manifest, the model against its hash; the fingerprint then.

    The fingerprint is taken before and after the reading: equal, the bytes read are the
    bytes the fingerprint stands for.
    """
    store = Datastore(Path(root), read_manifest(Path(root)))
    before = fingerprint(store)
    store = Datastore.open(root, verify=True)
    model = store.manifest.model
    if model is not None and model_content_hash(model.path) != model.content_hash:
        raise ManifestMismatchError(
            "the model directory's content is not the one the datastore was built with"
        )
    after = fingerprint(store)
    if after != before:
        raise ManifestMismatchError("files of the datastore changed while they were verified")
    return after


def without_paths(detail: str, *roots: str | Path) -> str:
    """A reason fit for a caller: the store's and data directory's paths cut out."""
    for root in sorted((str(r) for r in roots if str(r)), key=len, reverse=True):
        detail = detail.replace(root.rstrip("/") + "/", "").replace(root, "<datastore>")
    return detail
