"""The ``ngram_counts`` artifact: DSIR's hashed n-gram counts of every pool example.

Units hold the counts of their rows as CSR (``-offsets.npy``, ``-entries.npy`` with
(bucket, count) pairs); ``finish`` adds the pool's total counts per bucket
(``pool_counts.npy``), the pool side of the importance weights. No model is involved.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gradstore.artifacts.base import ArtifactBuilder, ArtifactUnit, ProgressCallback
from gradstore.examples import iter_jsonl
from gradstore.features.ngrams import MAX_ORDER, NUM_BUCKETS, NgramHasher, SparseCounts
from gradstore.files import atomic_save_npy, read_json
from gradstore.store.datastore import BuildSpec
from gradstore.store.reader import PoolReader

UNIT_ROWS = 16_384  # text hashing is cheap per row; fewer, larger units


def pool_texts(root: Path, start: int, end: int) -> list[str]:
    """The text (``Example.text``) of pool rows [start, end), streamed from the store's copy."""
    ids = read_json(root / "ids.json")[start:end]
    wanted = {example_id: i for i, example_id in enumerate(ids)}
    texts: list[str | None] = [None] * len(ids)
    for example in iter_jsonl(root / "examples.jsonl"):
        position = wanted.get(example.id)
        if position is not None:
            texts[position] = example.text()
    missing = [ids[i] for i, t in enumerate(texts) if t is None]
    if missing:
        raise ValueError(f"examples.jsonl lacks pool rows, e.g. {missing[0]!r}")
    return texts  # type: ignore[return-value]


class NgramCounts(ArtifactBuilder):
    name = "ngram_counts"
    kind = "ngram_counts"
    description = "DSIR's hashed unigram+bigram counts of the pool"

    def unit_rows(self, spec: BuildSpec) -> int:
        return max(spec.config.shard_size, UNIT_ROWS)

    def unit_files(self, unit: ArtifactUnit) -> list[str]:
        stem = self.unit_stem(unit)
        return [f"{stem}-offsets.npy", f"{stem}-entries.npy"]

    def totals_file(self) -> str:
        return f"{self.directory()}/pool_counts.npy"

    def params(self, spec: BuildSpec) -> dict:
        return {
            "num_buckets": NUM_BUCKETS,
            "max_order": MAX_ORDER,
            "words": "lower-cased, \\w+|[^\\w\\s]+ (NLTK wordpunct)",
            "hash": "sha256 of the n-gram mod num_buckets",
            "text": "prompt + newline + completion, or the messages' contents",
        }

    def compute(
        self,
        root: Path,
        spec: BuildSpec,
        unit: ArtifactUnit,
        device: str | None,
        on_batch: ProgressCallback | None,
    ) -> dict[str, np.ndarray]:
        counts = SparseCounts.of_texts(NgramHasher(), pool_texts(root, unit.start, unit.end))
        if on_batch is not None:
            on_batch(unit.end - unit.start)
        offsets_file, entries_file = self.unit_files(unit)
        entries = np.stack([counts.buckets, counts.counts], axis=1).astype(np.int32)
        return {offsets_file: counts.offsets, entries_file: entries}

    def finish(self, root: Path, spec: BuildSpec, units: list[ArtifactUnit]) -> list[str]:
        total = np.zeros(NUM_BUCKETS, dtype=np.int64)
        for unit in units:
            entries = np.load(root / self.unit_files(unit)[1])
            total += np.bincount(
                entries[:, 0], weights=entries[:, 1], minlength=NUM_BUCKETS
            ).astype(np.int64)
        atomic_save_npy(root / self.totals_file(), total)
        return [self.totals_file()]

    def shards(self, store: PoolReader) -> list[SparseCounts]:
        """The stored per-example counts, one CSR block per unit, in row order."""
        files = store.artifact_entry(self.name).files
        blocks = []
        for offsets_file, entries_file in zip(files[0:-1:2], files[1:-1:2], strict=True):
            entries = store.artifact_array(self.name, entries_file)
            blocks.append(
                SparseCounts(
                    np.asarray(store.artifact_array(self.name, offsets_file)),
                    np.asarray(entries[:, 0]),
                    np.asarray(entries[:, 1]),
                )
            )
        return blocks

    def pool_counts(self, store: PoolReader) -> np.ndarray:
        return np.asarray(store.artifact_array(self.name, self.totals_file()))
