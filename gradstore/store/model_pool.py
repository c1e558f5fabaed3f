"""One model pool per process: every model pass of a build or a query borrows its weights here.

Featurize shards, RDS+ embeddings, In2Core and Influence Distillation features, DELIFT's
kernel and every query method need the same base weights, with or without a store's warmup
adapters. Each loading its own copy held up to five copies in a worker (70 GB at 7B). The
pool keeps one entry per (model path, dtype, device): the base weights, and once a caller
asks for adapters, the ``CheckpointModel`` built *on those same weights* (PEFT injects the
LoRA layers in place, so the base is never loaded twice). A base pass on such an entry runs
with the adapters disabled. The entry's lock serialises passes on its weights (the GPU lock);
asking for weights beyond the pool's capacity evicts the least recently used entry first, so
a long-lived worker never holds more than ``capacity`` copies.
"""

from __future__ import annotations

import gc
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gradstore.features.modeling import resolve_device

if TYPE_CHECKING:
    from gradstore.config import ProjectionConfig
    from gradstore.features.checkpoint_model import CheckpointModel
    from gradstore.features.checkpoints import WarmupCheckpoint


@dataclass(frozen=True)
class ModelKey:
    """What makes two loads the same weights: the model, its adapters, dtype and device."""

    path: str
    adapters: tuple[str, ...]  # warmup checkpoint directories (+ projection), () for the base
    dtype: str
    device: str

    @property
    def weights(self) -> tuple[str, str, str]:
        return (self.path, self.dtype, self.device)


def model_key(
    model_path: str | Path,
    device: str | torch.device | None = None,
    checkpoints: Sequence[WarmupCheckpoint] = (),
    projection: ProjectionConfig | None = None,
) -> ModelKey:
    resolved = resolve_device(device) if not isinstance(device, torch.device) else device
    if resolved.type == "cuda" and resolved.index is None:  # "cuda" and "cuda:0": one key
        resolved = torch.device("cuda", torch.cuda.current_device())
    dtype = "bfloat16" if resolved.type == "cuda" else "float32"  # as load_base_model loads
    adapters = tuple(str(Path(c.path).resolve()) for c in checkpoints)
    if adapters and projection is not None:
        adapters += (projection.model_dump_json(),)
    return ModelKey(str(Path(model_path).resolve()), adapters, dtype, str(resolved))


@dataclass
class BaseHandle:
    """A base model to run forward passes on: ``with lock, as_base(): model(...)``."""

    model: torch.nn.Module
    as_base: Callable[[], AbstractContextManager]
    lock: threading.Lock


@dataclass
class _Entry:
    base: torch.nn.Module
    lock: threading.Lock = field(default_factory=threading.Lock)
    checkpoint: CheckpointModel | None = None
    adapters: tuple[str, ...] = ()

    def as_base(self) -> AbstractContextManager:
        """Looked up when entered: adapters added after a handle was given are disabled too."""
        if self.checkpoint is None:
            return nullcontext()
        return self.checkpoint.model.disable_adapter()


class ModelPool:
    """Models by ``ModelKey``, loaded once, at most ``capacity`` sets of weights at a time."""

    def __init__(self, capacity: int = 1):
        self.capacity = max(1, capacity)
        self._entries: OrderedDict[tuple[str, str, str], _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # base weights loaded so far (what a process pays for)

    def _entry(self, key: ModelKey) -> _Entry:
        from gradstore.features.modeling import load_base_model

        entry = self._entries.get(key.weights)
        if entry is not None:
            self._entries.move_to_end(key.weights)
            return entry
        while len(self._entries) >= self.capacity:  # free the old weights before loading
            self._entries.popitem(last=False)
            gc.collect()
        entry = _Entry(load_base_model(key.path, key.device))
        self.loads += 1
        self._entries[key.weights] = entry
        return entry

    def base(self, model_path: str | Path, device: str | torch.device | None = None) -> BaseHandle:
        """The base model (a loaded checkpoint model's weights with its adapters disabled)."""
        key = model_key(model_path, device)
        with self._lock:
            entry = self._entry(key)
            model = entry.base if entry.checkpoint is None else entry.checkpoint.model
            return BaseHandle(model, entry.as_base, entry.lock)

    def checkpoint_model(
        self,
        model_path: str | Path,
        checkpoints: Sequence[WarmupCheckpoint],
        projection: ProjectionConfig,
        device: str | torch.device | None = None,
    ) -> CheckpointModel:
        """The base model with these warmup adapters swapped in on demand, built on the
        pooled base weights; other adapters on the same weights are replaced (reloaded)."""
        from gradstore.features.checkpoint_model import CheckpointModel

        key = model_key(model_path, device, checkpoints, projection)
        with self._lock:
            entry = self._entry(key)
            if entry.checkpoint is not None and entry.adapters != key.adapters:
                del self._entries[key.weights]  # PEFT cannot take a second set in place
                gc.collect()
                entry = self._entry(key)
            if entry.checkpoint is None:
                with entry.lock:
                    entry.checkpoint = CheckpointModel(
                        model_path, checkpoints, projection, key.device,
                        base=entry.base, lock=entry.lock,
                    )  # fmt: skip
                entry.adapters = key.adapters
            return entry.checkpoint

    def loaded(self) -> list[ModelKey]:
        """What the pool holds now (for tests and metrics)."""
        with self._lock:
            return [
                ModelKey(path, entry.adapters, dtype, device)
                for (path, dtype, device), entry in self._entries.items()
            ]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            gc.collect()


# the process's pool; GRADSTORE_MODEL_POOL_SIZE: how many different models it may hold
POOL = ModelPool(int(os.environ.get("GRADSTORE_MODEL_POOL_SIZE", "1")))


def store_checkpoints(store_dir: str | Path):
    """(model path, warmup checkpoints, projection) of the store at ``store_dir``."""
    from gradstore.features.checkpoints import load_checkpoints
    from gradstore.store.datastore import load_build_spec, needed_model

    root = Path(store_dir).resolve()
    spec = load_build_spec(root)
    return needed_model(spec).path, load_checkpoints(root / "checkpoints"), spec.config.projection


def store_model(store_dir: str | Path, device: str | None = None) -> CheckpointModel:
    """The base model of the store with every warmup checkpoint, from the process's pool."""
    path, checkpoints, projection = store_checkpoints(store_dir)
    return POOL.checkpoint_model(path, checkpoints, projection, device)


@dataclass
class BaseOnly:
    """A base model without adapters, as a base pass reads a ``CheckpointModel``: for a
    store built without the warmup (its methods run only the base model, e.g. RDS+)."""

    model: torch.nn.Module
    tokenizer: Any  # a transformers tokenizer
    pad_token_id: int
    lock: threading.Lock
    device: torch.device


def store_base_model(
    store_dir: str | Path, device: str | None = None
) -> tuple[CheckpointModel | BaseOnly, Callable[[], AbstractContextManager]]:
    """(the store's model, the context that runs it as the plain base model)."""
    if not (Path(store_dir) / "checkpoints").is_dir():  # built without the warmup
        from gradstore.features.modeling import load_tokenizer
        from gradstore.features.tokenization import pad_token_id
        from gradstore.store.datastore import load_build_spec, needed_model

        path = needed_model(load_build_spec(Path(store_dir).resolve())).path
        handle = POOL.base(path, device)
        tokenizer = load_tokenizer(path)
        base = BaseOnly(
            handle.model, tokenizer, pad_token_id(tokenizer), handle.lock, resolve_device(device)
        )
        return base, handle.as_base
    model = store_model(store_dir, device)
    return model, model.model.disable_adapter
