"""The datastore on disk: layout, manifest and validated opening.

Layout of a store directory::

    build.json                 what to build (config, dataset, model) — written by prepare
    ids.json, skipped.json     kept example IDs in row order; skipped IDs with reasons
    tokens/{input_ids,labels,offsets}.npy   the tokenised pool as flat arrays (int32, int64)
    checkpoints/ckpt-{i}/      warmup adapter + Adam moments + learning rate
    features/ckpt-{i}/{kind}/{start}-{end}.npy   L2-normalised projected features (fp16,
                               fp32, or uint8 rows of scales + 8/4/2/1-bit codes when the
                               manifest's dtype is a code: ``gradstore.store.codes``), one shard
                               each, memory-mapped read-only when queried and decoded a
                               block of rows at a time
    index/{kind}.faiss         only for approximate index factories (IVF, PQ, HNSW, ...): the
                               exact default searches the feature shards themselves
    artifacts/{name}/...       what other selection methods need (hidden-state embeddings,
                               n-gram counts, ...), computed in units like the feature
                               shards, during the build or added to a ready store later
    manifest.json              written last; lists every file with its size and sha256, and
                               every artifact the store holds (``artifacts``)

A store is served only through ``Datastore.open``, which refuses one whose manifest is
missing (not ready) or whose files are missing or of the wrong size. Opening costs one
``stat`` per file; the sha256 of every byte is computed when the store is built and checked
by ``Datastore.verify`` (``gradstore verify``), never inside a request. Schema 1 stores (the
dense Rademacher projection, an fp32 FAISS copy of the features) still open: the manifest is
read as schema 2 and their FAISS file is ignored in favour of the fp16 shards. A manifest
without ``artifacts`` (schema 1, or schema 2 before artifacts) holds the gradient features
of its ``kinds`` and nothing else.

A ready store gains an artifact by rewriting its manifest (``update_manifest``, under a file
lock): the new files are added, none of the old ones changes, so an open ``Datastore`` keeps
serving and picks the artifact up with ``refresh``.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from gradstore.config import BuildConfig
from gradstore.errors import ManifestMismatchError, MissingArtifactError, NotReadyError
from gradstore.features.tokenization import TokenizedExample
from gradstore.files import atomic_save_npy, atomic_write_json, read_json, sha256_file
from gradstore.store.codes import CodedRows, FeatureCode, is_code

SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS = (1, 2)
EXACT_FACTORIES = ("Flat", "SQfp16")
MANIFEST = "manifest.json"
BUILD_SPEC = "build.json"


class ModelInfo(BaseModel):
    path: str
    content_hash: str


class BuildSpec(BaseModel):
    """What prepare() was asked to build; everything later stages need to know."""

    model_config = ConfigDict(extra="forbid")
    schema_version: int = SCHEMA_VERSION
    dataset_path: str
    dataset_sha256: str
    model: ModelInfo | None  # None: a store whose methods need no model (BM25, DSIR, random)
    template: str
    tokenizer_hash: str
    config: BuildConfig
    warmup_from: list[str] = []


class CheckpointEntry(BaseModel):
    index: int
    learning_rate: float
    weight: float


class IndexEntry(BaseModel):
    kind: str
    factory: str
    metric: str = "inner_product"
    file: str | None = None  # None: exact search over the feature shards


class FileEntry(BaseModel):
    sha256: str
    size: int | None = None  # None only in schema-1 manifests


class ArtifactEntry(BaseModel):
    """One artifact of the store: what made its bytes, and its files (row shards in order)."""

    model_config = ConfigDict(extra="forbid")
    kind: str
    params: dict = {}
    files: list[str] = []
    created_at: str


def needed_model(record: BuildSpec | Manifest) -> ModelInfo:
    """The store's model, for what runs it; a store built without one says so (409)."""
    if record.model is None:
        from gradstore.errors import ConflictError

        raise ConflictError(
            "this datastore was built without a model (its methods read the text alone); "
            "build a new datastore with a model for methods that run one"
        )
    return record.model


def gradient_artifact(kind: str) -> str:
    """The artifact name of a pool gradient feature kind (``adam`` → ``gradients.adam``)."""
    return f"gradients.{kind}"


class Manifest(BaseModel):
    """Everything that must match for a query to be meaningful, checked on open."""

    model_config = ConfigDict(extra="forbid")
    schema_version: int
    created_at: str
    model: ModelInfo | None  # None: built without a model (no tokens, no gradient features)
    template: str
    tokenizer_hash: str
    config: BuildConfig
    dataset_sha256: str
    num_examples: int
    num_skipped: int
    lora_parameters: int
    dim: int
    dtype: str
    projection: dict
    kinds: list[str]
    checkpoints: list[CheckpointEntry]
    shards: dict[str, list[str]]
    indexes: list[IndexEntry]
    files: dict[str, FileEntry]
    artifacts: dict[str, ArtifactEntry] = {}

    @property
    def total_dim(self) -> int:
        return self.dim * len(self.checkpoints)

    def artifact_names(self) -> set[str]:
        """Every artifact this store holds: its gradient kinds are artifacts too."""
        return set(self.artifacts) | {gradient_artifact(kind) for kind in self.kinds}


@dataclass(frozen=True)
class Shard:
    """A unit of featurize work: rows [start, end) at one checkpoint, every feature kind."""

    checkpoint: int
    start: int
    end: int

    @property
    def name(self) -> str:
        return f"ckpt-{self.checkpoint}/{self.start:09d}-{self.end:09d}"

    def feature_file(self, kind: str) -> str:
        return f"features/ckpt-{self.checkpoint}/{kind}/{self.start:09d}-{self.end:09d}.npy"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class TokenWriter:
    """Appends tokenised examples to the flat token arrays without holding the pool in RAM.

    Tokens go to raw temporary files as they come; ``close`` turns them into the three
    ``.npy`` arrays (chunked copies, atomic renames). RAM stays flat in pool size.
    """

    CHUNK = 4096

    def __init__(self, root: Path):
        self.dir = root / "tokens"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._raw = {  # closed in ``close``: they live as long as the writer
            name: open(self.dir / f".tmp-{name}.raw", "wb")  # noqa: SIM115
            for name in ("input_ids", "labels")
        }
        self._lengths: list[int] = []
        self._pending: dict[str, list[np.ndarray]] = {"input_ids": [], "labels": []}

    def add(self, example: TokenizedExample) -> None:
        self._pending["input_ids"].append(np.asarray(example.input_ids, dtype=np.int32))
        self._pending["labels"].append(np.asarray(example.labels, dtype=np.int32))
        self._lengths.append(len(example.input_ids))
        if len(self._pending["labels"]) >= self.CHUNK:
            self._flush()

    def _flush(self) -> None:
        for name, arrays in self._pending.items():
            if arrays:
                self._raw[name].write(np.concatenate(arrays).tobytes())
            arrays.clear()

    def close(self) -> int:
        """Write the arrays; return the number of examples."""
        self._flush()
        total = int(sum(self._lengths))
        for name, handle in self._raw.items():
            handle.close()
            tmp = self.dir / f".tmp-{name}.npy"
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int32, shape=(total,))
            if total:
                raw = np.memmap(handle.name, dtype=np.int32, mode="r", shape=(total,))
                for start in range(0, total, 1 << 24):
                    array[start : start + (1 << 24)] = raw[start : start + (1 << 24)]
                del raw
            array.flush()
            del array
            Path(tmp).replace(self.dir / f"{name}.npy")
            Path(handle.name).unlink()
        offsets = np.concatenate([[0], np.cumsum(self._lengths, dtype=np.int64)])
        atomic_save_npy(self.dir / "offsets.npy", offsets.astype(np.int64))
        return len(self._lengths)


class TokenStore(Sequence[TokenizedExample]):
    """The tokenised pool by row, memory-mapped: a sequence that loads rows on access."""

    def __init__(self, root: Path):
        self.ids: list[str] = read_json(root / "ids.json")
        self._input_ids = np.load(root / "tokens" / "input_ids.npy", mmap_mode="r")
        self._labels = np.load(root / "tokens" / "labels.npy", mmap_mode="r")
        self._offsets = np.load(root / "tokens" / "offsets.npy")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, row):  # type: ignore[override]
        if isinstance(row, slice):
            return [self[i] for i in range(*row.indices(len(self)))]
        a, b = int(self._offsets[row]), int(self._offsets[row + 1])
        return TokenizedExample(
            self.ids[row], self._input_ids[a:b].tolist(), self._labels[a:b].tolist()
        )

    def slice(self, start: int, end: int) -> list[TokenizedExample]:
        return self[start:end]


def load_build_spec(root: Path) -> BuildSpec:
    path = root / BUILD_SPEC
    if not path.exists():
        raise NotReadyError(f"{root} has no {BUILD_SPEC}: it was never prepared")
    return BuildSpec.model_validate(read_json(path))


def write_manifest(root: Path, manifest: Manifest) -> None:
    atomic_write_json(root / MANIFEST, manifest.model_dump(mode="json"))


@contextmanager
def manifest_lock(root: Path) -> Iterator[None]:
    """An exclusive lock on rewriting the manifest (processes of one host or a shared volume
    with POSIX locks): two artifacts finishing at once must not lose each other's entry."""
    with open(Path(root) / ".manifest.lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def update_manifest(root: Path, change: Callable[[Manifest], None]) -> Manifest:
    """Read, change and atomically rewrite the manifest of a ready store, under the lock."""
    with manifest_lock(root):
        manifest = read_manifest(root)
        change(manifest)
        write_manifest(root, manifest)
        return manifest


def _upgrade_schema_1(raw: dict) -> dict:
    """A schema-1 manifest read as schema 2: same shards, dense projection, no file sizes."""
    raw = dict(raw, schema_version=SCHEMA_VERSION)
    raw["files"] = {path: {"sha256": digest} for path, digest in raw["files"].items()}
    raw["projection"] = {"kind": "rademacher", **raw["projection"]}
    config = dict(raw["config"])
    config["projection"] = {"kind": "rademacher", **config.get("projection", {})}
    raw["config"] = config
    exact = config.get("index_factory", "Flat") in EXACT_FACTORIES
    raw["indexes"] = [dict(entry, file=None) if exact else entry for entry in raw["indexes"]]
    return raw


def read_manifest(root: Path) -> Manifest:
    path = root / MANIFEST
    if not path.exists():
        raise NotReadyError(f"datastore at {root} is not ready (no {MANIFEST})")
    try:
        raw = read_json(path)
        version = raw.get("schema_version")
        if version not in READABLE_SCHEMA_VERSIONS:
            raise ManifestMismatchError(
                f"{path}: schema version {version} is not one this gradstore reads "
                f"({', '.join(map(str, READABLE_SCHEMA_VERSIONS))}); rebuild the datastore"
            )
        if version == 1:
            raw = _upgrade_schema_1(raw)
        return Manifest.model_validate(raw)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ManifestMismatchError(f"{path} is not a valid manifest: {exc}") from None


@dataclass(frozen=True)
class FeatureBlock:
    """Rows [start, end) of one feature kind: one (rows, dim) array per checkpoint."""

    start: int
    end: int
    arrays: Sequence[np.ndarray | CodedRows]


class Datastore:
    """A ready datastore, opened after a stat of every file its manifest lists.

    Feature shards are memory-mapped read-only once and kept: a query reads pages, never a
    copy, and RAM beyond the page cache stays flat in pool size.
    """

    def __init__(self, root: Path, manifest: Manifest):
        self.root = root
        self.manifest = manifest
        self._mapped: dict[str, np.ndarray] = {}
        self._stats: dict[str, tuple[int, int, int]] = {}
        self._refresh_lock = threading.Lock()

    @classmethod
    def open(cls, root: str | Path, verify: bool = False) -> Datastore:
        """Open a ready store: O(files). ``verify`` also checks every byte's sha256 (slow)."""
        root = Path(root)
        store = cls(root, read_manifest(root))
        store._stats = _stat_files(root, store.manifest.files)
        if verify:
            store.verify()
        return store

    def refresh(self) -> bool:
        """Adopt artifacts added to the manifest since opening; True if any were.

        Only an extension is accepted: every file this store already serves must be listed
        again with the same checksum (otherwise the store was rebuilt under us).
        """
        with self._refresh_lock:
            latest = read_manifest(self.root)
            if latest.artifact_names() == self.manifest.artifact_names():
                return False
            for relative, entry in self.manifest.files.items():
                if latest.files.get(relative) != entry:
                    raise ManifestMismatchError(
                        f"the manifest of {self.root} changed {relative}: the store was rebuilt "
                        "after it was opened; open it again"
                    )
            added = {k: v for k, v in latest.files.items() if k not in self.manifest.files}
            self._stats.update(_stat_files(self.root, added))
            self.manifest = latest
            return True

    def verify(self) -> None:
        """Check every file's sha256 against the manifest (reads the whole store), then the
        recorded configuration against the checkpoints' own records."""
        for relative, entry in sorted(self.manifest.files.items()):
            if sha256_file(self.root / relative) != entry.sha256:
                raise ManifestMismatchError(
                    f"datastore file {relative} does not match its checksum in the manifest"
                )
        from gradstore.store.provenance import check_provenance

        check_provenance(
            self.root, self.root / BUILD_SPEC, self.manifest.config, self.manifest.num_examples
        )

    def check_unchanged(self) -> None:
        """Refuse to go on if any file changed since ``open`` (one stat per file)."""
        for relative, expected in self._stats.items():
            try:
                stat = os.stat(self.root / relative)
            except OSError:
                raise ManifestMismatchError(f"datastore file {relative} disappeared") from None
            if (stat.st_ino, stat.st_size, stat.st_mtime_ns) != expected:
                raise ManifestMismatchError(
                    f"datastore file {relative} changed on disk after the store was opened"
                )

    @cached_property
    def ids(self) -> list[str]:
        return read_json(self.root / "ids.json")

    @cached_property
    def row_of(self) -> dict[str, int]:
        return {example_id: row for row, example_id in enumerate(self.ids)}

    @property
    def num_examples(self) -> int:
        return self.manifest.num_examples

    def checkpoint_weights(self) -> np.ndarray:
        return np.array([c.weight for c in self.manifest.checkpoints], dtype=np.float32)

    def _map(self, relative: str) -> np.ndarray:
        if relative not in self._mapped:
            self._mapped[relative] = np.load(self.root / relative, mmap_mode="r")
        return self._mapped[relative]

    def _shard_files(self, kind: str, checkpoint: int) -> list[str]:
        key = f"ckpt-{checkpoint}/{kind}"
        if key not in self.manifest.shards:
            raise NotReadyError(f"this datastore keeps no {kind!r} features")
        return self.manifest.shards[key]

    @cached_property
    def feature_code(self) -> FeatureCode | None:
        """The code of the gradient feature shards, None when they are plain floats."""
        manifest = self.manifest
        if not is_code(manifest.dtype):
            return None
        return FeatureCode.of(manifest.dtype, manifest.dim, manifest.config.scale_block)

    def _feature_array(self, relative: str) -> np.ndarray | CodedRows:
        """One feature shard as (rows, dim): the memory map itself, or a decoding view of it."""
        raw = self._map(relative)
        code = self.feature_code
        return raw if code is None else CodedRows(raw, code)

    def feature_blocks(self, kind: str) -> Iterator[FeatureBlock]:
        """(rows, dim) shards of every checkpoint, block by block in row order: memory maps of
        float stores; of coded stores, views that decode the rows they are asked for."""
        per_checkpoint = [self._shard_files(kind, c.index) for c in self.manifest.checkpoints]
        start = 0
        for files in zip(*per_checkpoint, strict=True):
            arrays = [self._feature_array(f) for f in files]
            end = start + arrays[0].shape[0]
            yield FeatureBlock(start, end, arrays)
            start = end

    def features(self, kind: str, checkpoint: int) -> np.ndarray:
        """All rows of one checkpoint's features as float32 (n, dim): tests and small stores."""
        files = self._shard_files(kind, checkpoint)
        return np.concatenate([np.asarray(self._feature_array(f)) for f in files]).astype(
            np.float32
        )

    def rows(self, kind: str, rows: np.ndarray) -> np.ndarray:
        """Concatenated features [f_1 | … | f_N] of the given rows, float32 (len(rows), N·dim)."""
        self.check_unchanged()
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.manifest.total_dim), dtype=np.float32)
        dim = self.manifest.dim
        for block in self.feature_blocks(kind):
            inside = np.flatnonzero((rows >= block.start) & (rows < block.end))
            if inside.size:
                local = rows[inside] - block.start
                for i, array in enumerate(block.arrays):
                    out[inside, i * dim : (i + 1) * dim] = array[local]
        return out

    def artifact_entry(self, name: str) -> ArtifactEntry:
        entry = self.manifest.artifacts.get(name)
        if entry is None:
            raise MissingArtifactError(name)
        return entry

    def artifact_blocks(self, name: str) -> Iterator[FeatureBlock]:
        """Memory-mapped (rows, dim) shards of a row-sharded array artifact, in row order."""
        start = 0
        for relative in self.artifact_entry(name).files:
            array = self._map(relative)
            yield FeatureBlock(start, start + array.shape[0], [array])
            start += array.shape[0]

    def artifact_array(self, name: str, relative: str) -> np.ndarray:
        """One memory-mapped file of an artifact (checked to belong to it)."""
        if relative not in self.artifact_entry(name).files:
            raise ValueError(f"{relative} is not a file of artifact {name!r}")
        return self._map(relative)

    def index(self, kind: str):
        """The approximate FAISS index of a feature kind, or None when search is exact."""
        import faiss

        for entry in self.manifest.indexes:
            if entry.kind == kind:
                if entry.file is None:
                    return None
                return faiss.read_index(str(self.root / entry.file))
        raise NotReadyError(f"this datastore has no index of feature kind {kind!r}")


def _stat_files(root: Path, files: dict[str, FileEntry]) -> dict[str, tuple[int, int, int]]:
    """(inode, size, mtime) of every listed file, refusing missing or resized ones."""
    stats = {}
    for relative, entry in sorted(files.items()):
        try:
            stat = (root / relative).stat()
        except OSError:
            raise ManifestMismatchError(f"datastore file {relative} is missing") from None
        if entry.size is not None and stat.st_size != entry.size:
            raise ManifestMismatchError(
                f"datastore file {relative} has {stat.st_size} bytes, the manifest "
                f"promised {entry.size}"
            )
        stats[relative] = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    return stats
