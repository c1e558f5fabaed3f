"""Target features on demand: the query side of a ready datastore.

Loads the base model and the checkpoint adapters once and maps the features (the service
caches the engine), then turns target examples into per-checkpoint projected, normalised plain
gradients with exactly the projector and tokenisation the store was built with.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from functools import cached_property

import numpy as np
import torch

from gradstore.checkpoint_model import CheckpointModel
from gradstore.checkpoints import load_checkpoints
from gradstore.errors import InvalidInputError, ManifestMismatchError
from gradstore.examples import Example
from gradstore.search import FeatureScanner
from gradstore.store import Datastore
from gradstore.tokenization import ExampleEncoder, SkippedExample


class QueryEngine:
    """A ready datastore with its model loaded, safe to share between threads."""

    def __init__(self, datastore: Datastore, device: str | torch.device | None = None):
        from gradstore.build import tokenizer_hash

        self.datastore = datastore
        manifest = datastore.manifest
        checkpoints = load_checkpoints(datastore.root / "checkpoints")
        self.model = CheckpointModel(
            manifest.model.path, checkpoints, manifest.config.projection, device
        )
        if self.model.num_lora_parameters != manifest.lora_parameters:
            raise ManifestMismatchError(
                f"the model has {self.model.num_lora_parameters} LoRA parameters, "
                f"the datastore was built with {manifest.lora_parameters}"
            )
        if tokenizer_hash(self.model.tokenizer, manifest.template) != manifest.tokenizer_hash:
            raise ManifestMismatchError(
                f"the tokenizer at {manifest.model.path} is not the one of the datastore"
            )
        self.encoder = ExampleEncoder(
            self.model.tokenizer,
            manifest.config.max_seq_len,
            manifest.template,  # type: ignore[arg-type]
        )
        self._indexes: dict[str, object] = {}
        self._index_lock = threading.Lock()
        self.scanner = FeatureScanner(datastore, self.model.device)

    @property
    def manifest(self):
        return self.datastore.manifest

    def index(self, kind: str):
        """The store's approximate FAISS index of ``kind``; None where search is exact."""
        with self._index_lock:
            if kind not in self._indexes:
                self._indexes[kind] = self.datastore.index(kind)
            return self._indexes[kind]

    @cached_property
    def pool_examples(self) -> list[Example]:
        """The pool's text, for lexical baselines, in row order."""
        from gradstore.examples import read_jsonl

        by_id = {e.id: e for e in read_jsonl(self.datastore.root / "examples.jsonl")}
        return [by_id[i] for i in self.datastore.ids]

    def target_features(
        self, targets: Sequence[Example], timings: dict[str, float] | None = None
    ) -> tuple[np.ndarray, list[int], list[SkippedExample]]:
        """Features (n_kept, N_checkpoints, dim) of the usable targets, their positions, skips."""
        started = time.perf_counter()
        kept, positions, skipped = [], [], []
        for position, target in enumerate(targets):
            encoded = self.encoder.encode(target)
            if isinstance(encoded, SkippedExample):
                skipped.append(encoded)
            else:
                kept.append(encoded)
                positions.append(position)
        if not kept:
            raise InvalidInputError(
                "no target example has a completion token: "
                + "; ".join(f"{s.id}: {s.reason}" for s in skipped)
            )
        tokenize_done = time.perf_counter()
        batch = self.manifest.config.batch_size
        with self.model.lock:
            per_checkpoint = [
                self.model.featurizer(entry.index, batch, adam=False).featurize(kept, ("sgd",))[
                    "sgd"
                ]
                for entry in self.manifest.checkpoints
            ]
        features = np.stack(per_checkpoint, axis=1)  # (n_kept, N_checkpoints, dim)
        if timings is not None:
            timings["tokenize"] = (tokenize_done - started) * 1000
            timings["target_gradients"] = (time.perf_counter() - tokenize_done) * 1000
        return features, positions, skipped
