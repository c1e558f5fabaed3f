"""What a selection method may use of a loaded store: four narrow parts, not the whole engine.

A method sees the pool (rows, artifacts, ids), a target encoder (targets in the store's
tokenisation, and their gradient features), a scorer (exact scans of stored features) and a
model handle (the store's base model, with or without its warmup checkpoints), plus a
per-store cache. ``QueryEngine`` is one implementation; a test (or a GPU path) can give
another, and mypy checks that a method reaches nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from gradstore.store.reader import PoolReader

if TYPE_CHECKING:
    from gradstore.examples import Example
    from gradstore.features.checkpoint_model import CheckpointModel
    from gradstore.features.tokenization import ExampleEncoder, SkippedExample, TokenizedExample
    from gradstore.store.model_pool import BaseHandle

__all__ = ["ModelHandle", "PoolReader", "QueryContext", "Scorer", "TargetEncoder"]


class TargetEncoder(Protocol):
    """Targets in the store's tokenisation, and their gradient features at each checkpoint."""

    @property
    def tokenizer(self) -> Any: ...
    @property
    def encoder(self) -> ExampleEncoder: ...
    def encode_targets(
        self, targets: Sequence[Example], eos: bool = False
    ) -> tuple[list[TokenizedExample], list[int], list[SkippedExample]]: ...
    def target_features(
        self,
        targets: Sequence[Example],
        timings: dict[str, float] | None = None,
        eos: bool = False,
    ) -> tuple[np.ndarray, list[int], list[SkippedExample]]: ...


class Scorer(Protocol):
    """Exact scans of stored features (``gradstore.store.search.FeatureScanner`` is one)."""

    @property
    def device(self) -> torch.device: ...
    def scores(self, kind: str, queries: np.ndarray) -> np.ndarray: ...
    def artifact_scores(self, name: str, queries: np.ndarray) -> np.ndarray: ...


class ModelHandle(Protocol):
    """The store's model from the process's model pool, loaded on first use."""

    def checkpoint_model(self) -> CheckpointModel: ...
    def base_model(self) -> BaseHandle: ...


class QueryContext(Protocol):
    """Everything a method's ``score`` is given besides its request."""

    @property
    def pool(self) -> PoolReader: ...
    @property
    def target_encoder(self) -> TargetEncoder: ...
    @property
    def scorer(self) -> Scorer: ...
    @property
    def models(self) -> ModelHandle: ...
    @property
    def pool_examples(self) -> list[Example]: ...
    def index(self, kind: str) -> Any: ...
    def cached(self, key: Any, make: Callable[[], Any]) -> Any: ...
