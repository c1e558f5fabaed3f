"""The query side of a ready datastore: what a selection reads, loaded only when asked for.

An engine is cheap to make (the service caches one per store): the tokenizer and the model
(base, or base + warmup adapters + projector, both from the process's ``model_pool``) are
each fetched on the first query whose method needs them, and checked against the manifest
then. So BM25, DSIR and random answer without a model, and RDS+ without the adapters. Target
gradients use exactly the projector and tokenisation the store was built with. Methods see
the engine through ``selection.context.QueryContext`` (pool, target encoder, scorer, model
handle), never the engine itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gradstore.errors import ConflictError, InvalidInputError, ManifestMismatchError
from gradstore.examples import Example
from gradstore.features.modeling import resolve_device
from gradstore.features.tokenization import ExampleEncoder, SkippedExample, TokenizedExample
from gradstore.store.datastore import Datastore
from gradstore.store.search import FeatureScanner

if TYPE_CHECKING:
    from gradstore.features.checkpoint_model import CheckpointModel
    from gradstore.features.checkpoints import WarmupCheckpoint
    from gradstore.store.model_pool import BaseHandle


class QueryEngine:
    """A ready datastore and whatever its queries have loaded so far; thread-safe."""

    def __init__(self, datastore: Datastore, device: str | torch.device | None = None):
        self.datastore = datastore
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.scanner = FeatureScanner(datastore, self.device)
        self._load_lock = threading.RLock()
        self.models_used: set[str] = set()  # "base" / "checkpoints" asked of the pool so far
        self._checkpoints: list[WarmupCheckpoint] | None = None
        self._indexes: dict[str, object] = {}
        self._cache: dict[Any, Any] = {}

    @property
    def manifest(self):
        return self.datastore.manifest

    # -- the QueryContext a method sees ------------------------------------------------------

    @property
    def pool(self) -> Datastore:
        return self.datastore

    @property
    def target_encoder(self) -> QueryEngine:
        return self

    @property
    def scorer(self) -> FeatureScanner:
        return self.scanner

    @property
    def models(self) -> QueryEngine:
        return self

    # -- what is loaded --------------------------------------------------------------------

    @property
    def model_loaded(self) -> bool:
        """Whether this engine has asked for a model (base or checkpoints) yet."""
        return bool(self.models_used)

    @cached_property
    def tokenizer(self):
        """The model directory's tokenizer, refused unless it is the store's."""
        from gradstore.features.modeling import load_tokenizer
        from gradstore.features.tokenization import tokenizer_hash

        if self.manifest.model is None:
            raise ConflictError("this datastore was built without a model")
        tokenizer = load_tokenizer(self.manifest.model.path)
        if tokenizer_hash(tokenizer, self.manifest.template) != self.manifest.tokenizer_hash:
            raise ManifestMismatchError(
                f"the tokenizer at {self.manifest.model.path} is not the one of the datastore"
            )
        return tokenizer

    @cached_property
    def encoder(self) -> ExampleEncoder:
        return ExampleEncoder(
            self.tokenizer, self.manifest.config.max_seq_len, self.manifest.template
        )

    @property
    def model(self) -> CheckpointModel:
        """The base model with the warmup checkpoints (``CheckpointModel``)."""
        return self.checkpoint_model()

    def checkpoint_model(self) -> CheckpointModel:
        """The base model with the warmup checkpoints, from the process's model pool."""
        from gradstore.features.checkpoints import load_checkpoints
        from gradstore.store.model_pool import POOL

        _ = self.tokenizer  # checked first: a cheap refusal before the weights load
        with self._load_lock:
            if self._checkpoints is None:
                self._checkpoints = load_checkpoints(self.datastore.root / "checkpoints")
            model = POOL.checkpoint_model(
                self.manifest.model.path,
                self._checkpoints,
                self.manifest.config.projection,
                self.device,
            )
            if model.num_lora_parameters != self.manifest.lora_parameters:
                raise ManifestMismatchError(
                    f"the model has {model.num_lora_parameters} LoRA parameters, "
                    f"the datastore was built with {self.manifest.lora_parameters}"
                )
            self.models_used.add("checkpoints")
            return model

    def base_model(self) -> BaseHandle:
        """The base model for forward passes (``with handle.lock, handle.as_base():``): the
        pooled weights, with the adapters disabled when a checkpoint model holds them."""
        from gradstore.store.model_pool import POOL

        _ = self.tokenizer
        with self._load_lock:
            handle = POOL.base(self.manifest.model.path, self.device)
            self.models_used.add("base")
            return handle

    def cached(self, key: Any, make: Callable[[], Any]) -> Any:
        """A per-engine cache for what a method derives from the store (BM25 index, ...)."""
        with self._load_lock:
            if key not in self._cache:
                self._cache[key] = make()
            return self._cache[key]

    def require_artifacts(self, names: Sequence[str], method: str | None = None) -> None:
        """Refuse (409) before loading anything if the store lacks one of ``names``; an
        artifact added since the store was opened is picked up here."""
        from gradstore.artifacts import missing_artifact_error

        missing = [n for n in names if n not in self.manifest.artifact_names()]
        if missing and self.datastore.refresh():
            missing = [n for n in names if n not in self.manifest.artifact_names()]
        if missing:
            raise missing_artifact_error(missing[0], method)

    def index(self, kind: str):
        """The store's approximate FAISS index of ``kind``; None where search is exact."""
        with self._load_lock:
            if kind not in self._indexes:
                self._indexes[kind] = self.datastore.index(kind)
            return self._indexes[kind]

    @cached_property
    def pool_examples(self) -> list[Example]:
        """The pool's text, for lexical baselines, in row order."""
        from gradstore.examples import read_jsonl

        by_id = {e.id: e for e in read_jsonl(self.datastore.root / "examples.jsonl")}
        return [by_id[i] for i in self.datastore.ids]

    # -- targets ---------------------------------------------------------------------------

    def encode_targets(
        self, targets: Sequence[Example], eos: bool = False
    ) -> tuple[list[TokenizedExample], list[int], list[SkippedExample]]:
        """Targets in the target encoding (no EOS unless asked): kept, their positions, skips."""
        kept, positions, skipped = [], [], []
        for position, target in enumerate(targets):
            encoded = self.encoder.encode(target, eos=eos)
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
        return kept, positions, skipped

    def target_features(
        self,
        targets: Sequence[Example],
        timings: dict[str, float] | None = None,
        eos: bool = False,
    ) -> tuple[np.ndarray, list[int], list[SkippedExample]]:
        """Features (n_kept, N_checkpoints, dim) of the usable targets, their positions, skips."""
        started = time.perf_counter()
        kept, positions, skipped = self.encode_targets(targets, eos)
        tokenize_done = time.perf_counter()
        model = self.checkpoint_model()
        batch = self.manifest.config.batch_size
        with model.lock:
            per_checkpoint = [
                model.featurizer(
                    entry.index, batch, adam=False, batch_tokens=self.manifest.config.batch_tokens
                ).featurize(kept, ("sgd",))["sgd"]
                for entry in self.manifest.checkpoints
            ]
        features = np.stack(per_checkpoint, axis=1)  # (n_kept, N_checkpoints, dim)
        if timings is not None:
            timings["tokenize"] = (tokenize_done - started) * 1000
            timings["target_gradients"] = (time.perf_counter() - tokenize_done) * 1000
        return features, positions, skipped
