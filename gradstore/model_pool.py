"""The one model a process keeps: a store's base model with its warmup checkpoints.

Every model pass of a build (featurize shards, RDS+ embeddings, In2Core and Influence
Distillation features, DELIFT's kernel) needs the same base weights, with or without a
checkpoint's LoRA weights. Each loading its own copy held up to five copies in a worker;
here one ``CheckpointModel`` per process serves them all: checkpoints are swapped in, and a
base pass runs it with the adapters disabled. Asking for another store's model evicts the
loaded one first, so a long-lived worker never holds two.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from gradstore.checkpoint_model import CheckpointModel

_lock = threading.Lock()
_loaded: tuple[tuple[str, str | None], CheckpointModel] | None = None


def store_model(store_dir: str | Path, device: str | None = None) -> CheckpointModel:
    """The base model of the store with every warmup checkpoint, loaded once per process."""
    from gradstore.checkpoints import load_checkpoints
    from gradstore.store import load_build_spec, needed_model

    global _loaded
    root = Path(store_dir).resolve()
    key = (str(root), device)
    with _lock:
        if _loaded is not None and _loaded[0] == key:
            return _loaded[1]
        if _loaded is not None:  # free the old weights before the new ones load
            _loaded = None
            gc.collect()
        spec = load_build_spec(root)
        checkpoints = load_checkpoints(root / "checkpoints")
        model = CheckpointModel(
            needed_model(spec).path, checkpoints, spec.config.projection, device
        )
        _loaded = (key, model)
        return model


def store_base_model(
    store_dir: str | Path, device: str | None = None
) -> tuple[CheckpointModel, Callable[[], AbstractContextManager]]:
    """(the store's model, the context that runs it as the plain base model)."""
    model = store_model(store_dir, device)
    return model, model.model.disable_adapter
