"""Gradient features of the influence methods, shared by their artifacts and their queries.

Both methods read the model after training on the pool: the last warmup checkpoint. The
pool side is computed once into a store artifact; the target side (and Influence
Distillation's landmarks) at query time with exactly the same featurizer, so the two meet.

- ``layer_gradients`` (In2Core): raw gradients of the blocks in L', each block projected on
  its own (``LayerFeaturizer``), directions plus unprojected norms.
- ``update_directions`` (Influence Distillation): the Adam direction a ⊙ g over every LoRA
  weight, projected and normalised (``AdamUpdateDirection`` in the featurizer's place of
  LESS's Γ).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gradstore.config import ProjectionConfig
from gradstore.features.checkpoint_model import CheckpointModel
from gradstore.features.checkpoints import WarmupCheckpoint
from gradstore.features.featurizer import CheckpointFeaturizer
from gradstore.features.layer_gradients import LayerFeaturizer, default_layers
from gradstore.features.projection import make_projector

LAYER_GRADIENTS = "layer_gradients"
UPDATE_DIRECTIONS = "update_directions"


def last_checkpoint(checkpoints: Sequence[WarmupCheckpoint]) -> WarmupCheckpoint:
    """The model trained furthest on the pool: In2Core's and Influence Distillation's θ."""
    if not checkpoints:
        raise ValueError("the influence methods need at least one warmup checkpoint")
    return max(checkpoints, key=lambda c: c.index)


def num_blocks(model_dir: str | Path) -> int:
    """Transformer blocks of the model, from its config alone (no weights loaded)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model_dir))
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if getattr(config, key, None):
            return int(getattr(config, key))
    raise ValueError(f"{model_dir}: the config does not say how many blocks the model has")


def layer_plan(model_dir: str | Path, projection: ProjectionConfig) -> tuple[list[int], int]:
    """(L': the last quarter of the blocks, columns per block: d / |L'|, at least 16)."""
    layers = default_layers(range(num_blocks(model_dir)))
    return layers, max(16, projection.dim // len(layers))


def layer_featurizer(
    model: CheckpointModel,
    index: int,
    layers: Sequence[int],
    dim: int,
    batch_size: int,
    batch_tokens: int | None = None,
) -> LayerFeaturizer:
    """Per-block features at checkpoint ``index`` with the store's projection kind and seed."""
    model.activate(index)
    projection = model.projector

    def projector(in_dim: int, out_dim: int):
        nonzeros = min(getattr(projection, "nonzeros", 1), out_dim)
        return make_projector(
            projection.kind, in_dim, out_dim, projection.seed, model.device, nonzeros=nonzeros
        )

    return LayerFeaturizer(
        model.model, layers, dim, projector, model.pad_token_id, batch_size, batch_tokens
    )


def update_featurizer(
    model: CheckpointModel,
    checkpoint: WarmupCheckpoint,
    batch_size: int,
    batch_tokens: int | None = None,
) -> CheckpointFeaturizer:
    """Projected, normalised a ⊙ g at ``checkpoint`` (ask it for the ``update`` kind)."""
    return model.featurizer(
        checkpoint.index, batch_size, adam=False, batch_tokens=batch_tokens, update=True
    )
