"""The datastore on disk: layout, manifest and validated opening.

Layout of a store directory::

    build.json                 what to build (config, dataset, model) — written by prepare
    ids.json, skipped.json     kept example IDs in row order; skipped IDs with reasons
    tokens/{input_ids,labels,offsets}.npy   the tokenised pool (ragged, int32/int64)
    checkpoints/ckpt-{i}/      warmup adapter + Adam moments + learning rate
    features/ckpt-{i}/{kind}/{start}-{end}.npy   L2-normalised projected features, one shard each
    index/{kind}.faiss         inner-product index over the concatenated checkpoint features
    manifest.json              written last; lists every file with its sha256

A store is served only through ``Datastore.open``, which refuses one whose manifest is
missing (not ready) or whose files do not match it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from gradstore.config import BuildConfig
from gradstore.errors import ManifestMismatchError, NotReadyError
from gradstore.files import atomic_save_npy, atomic_write_json, read_json, sha256_file
from gradstore.tokenization import TokenizedExample

SCHEMA_VERSION = 1
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
    model: ModelInfo
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
    file: str


class Manifest(BaseModel):
    """Everything that must match for a query to be meaningful, checked on open."""

    model_config = ConfigDict(extra="forbid")
    schema_version: int
    created_at: str
    model: ModelInfo
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
    files: dict[str, str]

    @property
    def total_dim(self) -> int:
        return self.dim * len(self.checkpoints)


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


def save_tokens(root: Path, examples: list[TokenizedExample]) -> None:
    """Store the tokenised pool as three flat arrays so shards can slice it cheaply."""
    lengths = np.array([len(e.input_ids) for e in examples], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat_ids = [t for e in examples for t in e.input_ids]
    flat_labels = [t for e in examples for t in e.labels]
    atomic_save_npy(root / "tokens" / "input_ids.npy", np.array(flat_ids, dtype=np.int64))
    atomic_save_npy(root / "tokens" / "labels.npy", np.array(flat_labels, dtype=np.int64))
    atomic_save_npy(root / "tokens" / "offsets.npy", offsets)


class TokenStore:
    """Read access to the tokenised pool by row range."""

    def __init__(self, root: Path):
        self.ids: list[str] = read_json(root / "ids.json")
        self._input_ids = np.load(root / "tokens" / "input_ids.npy", mmap_mode="r")
        self._labels = np.load(root / "tokens" / "labels.npy", mmap_mode="r")
        self._offsets = np.load(root / "tokens" / "offsets.npy")

    def __len__(self) -> int:
        return len(self.ids)

    def slice(self, start: int, end: int) -> list[TokenizedExample]:
        out = []
        for row in range(start, end):
            a, b = int(self._offsets[row]), int(self._offsets[row + 1])
            out.append(
                TokenizedExample(
                    self.ids[row],
                    self._input_ids[a:b].tolist(),
                    self._labels[a:b].tolist(),
                )
            )
        return out


def load_build_spec(root: Path) -> BuildSpec:
    path = root / BUILD_SPEC
    if not path.exists():
        raise NotReadyError(f"{root} has no {BUILD_SPEC}: it was never prepared")
    return BuildSpec.model_validate(read_json(path))


def write_manifest(root: Path, manifest: Manifest) -> None:
    atomic_write_json(root / MANIFEST, manifest.model_dump(mode="json"))


class Datastore:
    """A ready datastore, opened only after its files were checked against the manifest."""

    def __init__(self, root: Path, manifest: Manifest):
        self.root = root
        self.manifest = manifest

    @classmethod
    def open(cls, root: str | Path, verify: bool = True) -> Datastore:
        """Open a ready store; ``verify`` checks every file's sha256 (else only sizes exist)."""
        root = Path(root)
        path = root / MANIFEST
        if not path.exists():
            raise NotReadyError(f"datastore at {root} is not ready (no {MANIFEST})")
        try:
            manifest = Manifest.model_validate(read_json(path))
        except ValueError as exc:
            raise ManifestMismatchError(f"{path} is not a valid manifest: {exc}") from None
        if manifest.schema_version != SCHEMA_VERSION:
            raise ManifestMismatchError(
                f"{path}: schema version {manifest.schema_version}, expected {SCHEMA_VERSION}"
            )
        for relative, expected in sorted(manifest.files.items()):
            file = root / relative
            if not file.is_file():
                raise ManifestMismatchError(f"datastore file {relative} is missing")
            if verify and sha256_file(file) != expected:
                raise ManifestMismatchError(
                    f"datastore file {relative} does not match its checksum in the manifest"
                )
        return cls(root, manifest)

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

    def features(self, kind: str, checkpoint: int) -> np.ndarray:
        """All rows of one checkpoint's features, float32 (n, dim)."""
        files = self.manifest.shards[f"ckpt-{checkpoint}/{kind}"]
        return np.concatenate([np.load(self.root / f, mmap_mode="r") for f in files]).astype(
            np.float32
        )

    def concatenated_features(self, kind: str) -> np.ndarray:
        """Rows as [f_1 | f_2 | ... | f_N], the vectors the index holds (n, N·dim) float32."""
        return np.concatenate(
            [self.features(kind, c.index) for c in self.manifest.checkpoints], axis=1
        )

    def index(self, kind: str):
        """The FAISS index of a feature kind (loaded from disk on each call; cache the store)."""
        import faiss

        for entry in self.manifest.indexes:
            if entry.kind == kind:
                return faiss.read_index(str(self.root / entry.file))
        raise NotReadyError(f"this datastore has no index of feature kind {kind!r}")
