"""The one model a process keeps: a store's base model with its warmup checkpoints.

Every model pass of a build (featurize shards, RDS+ embeddings, In2Core and Influence
Distillation features, DELIFT's kernel) needs the same base weights, with or without a
checkpoint's LoRA weights. Each loading its own copy held up to five copies in a worker;
here one ``CheckpointModel`` per process serves them all: checkpoints are swapped in, and a
base pass runs it with the adapters disabled. Asking for another store's model evicts the
loaded one first, so a long-lived worker never holds two. A store built without the warmup
(its methods run only the base model, e.g. RDS+) has no checkpoints: its base passes get
the base model alone (``BaseOnly``), under the same one-model rule.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from gradstore.checkpoint_model import CheckpointModel


class BaseOnly:
    """A base model without adapters: what a base pass reads of a ``CheckpointModel``."""

    def __init__(self, model_dir: str | Path, device: str | None = None):
        from gradstore.modeling import load_base_model, load_tokenizer, resolve_device
        from gradstore.tokenization import pad_token_id

        self.device = resolve_device(device)
        self.tokenizer = load_tokenizer(model_dir)
        self.pad_token_id = pad_token_id(self.tokenizer)
        self.model = load_base_model(model_dir, self.device)
        self.lock = threading.Lock()


_lock = threading.Lock()
_loaded: tuple[tuple[str, str | None], CheckpointModel | BaseOnly] | None = None


def store_model(store_dir: str | Path, device: str | None = None) -> CheckpointModel:
    """The base model of the store with every warmup checkpoint, loaded once per process."""
    model = _load(store_dir, device, with_checkpoints=True)
    assert isinstance(model, CheckpointModel)
    return model


def _load(store_dir: str | Path, device: str | None, with_checkpoints: bool):
    from gradstore.checkpoints import load_checkpoints
    from gradstore.store import load_build_spec, needed_model

    global _loaded
    root = Path(store_dir).resolve()
    key = (str(root) if with_checkpoints else f"{root} (base only)", device)
    with _lock:
        if _loaded is not None and _loaded[0] == key:
            return _loaded[1]
        if _loaded is not None:  # free the old weights before the new ones load
            _loaded = None
            gc.collect()
        spec = load_build_spec(root)
        model: CheckpointModel | BaseOnly
        if with_checkpoints:
            checkpoints = load_checkpoints(root / "checkpoints")
            model = CheckpointModel(
                needed_model(spec).path, checkpoints, spec.config.projection, device
            )
        else:
            model = BaseOnly(needed_model(spec).path, device)
        _loaded = (key, model)
        return model


def store_base_model(
    store_dir: str | Path, device: str | None = None
) -> tuple[CheckpointModel | BaseOnly, Callable[[], AbstractContextManager]]:
    """(the store's model, the context that runs it as the plain base model)."""
    if not (Path(store_dir) / "checkpoints").is_dir():  # built without the warmup
        model = _load(store_dir, device, with_checkpoints=False)
        return model, nullcontext
    model = store_model(store_dir, device)
    return model, model.model.disable_adapter
