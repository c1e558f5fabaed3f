"""The influence methods' pool artifacts, both computed at the store's last checkpoint.

- ``layer_gradients`` (In2Core): per unit, ``{rows}.npy`` — (rows, |L'|, d_l) unit
  directions of each block's projected raw gradient (store dtype) — and ``{rows}.norms.npy``
  — (rows, |L'|) float32 unprojected norms. One truncated forward+backward per example.
- ``update_directions`` (Influence Distillation, ``exact`` mode): (rows, d) projected,
  normalised Adam update directions a ⊙ g. One full forward+backward per example.

Unlike ``hidden_states`` they need the warmup checkpoints, so a build computes them after
warmup (``needs_checkpoints``); a ready store gains them without touching anything it has.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gradstore.artifacts.base import ArtifactBuilder, ArtifactUnit, ProgressCallback
from gradstore.features.checkpoints import load_checkpoints
from gradstore.features.influence_features import (
    LAYER_GRADIENTS,
    UPDATE_DIRECTIONS,
    last_checkpoint,
    layer_featurizer,
    layer_plan,
    update_featurizer,
)
from gradstore.store.codes import float_dtype
from gradstore.store.datastore import BuildSpec, TokenStore, needed_model
from gradstore.store.model_pool import store_model


def _dtype(spec: BuildSpec) -> type:
    return float_dtype(spec.config.dtype)


class LayerGradients(ArtifactBuilder):
    name = LAYER_GRADIENTS
    kind = "layer_gradients"
    description = (
        "In2Core features: each of the last quarter of the blocks' raw LoRA gradients "
        "projected on its own, with unprojected norms, at the last checkpoint"
    )
    needs_model = True
    needs_checkpoints = True

    def unit_files(self, unit: ArtifactUnit) -> list[str]:
        stem = self.unit_stem(unit)
        return [f"{stem}.npy", f"{stem}.norms.npy"]

    def params(self, spec: BuildSpec) -> dict:
        layers, dim = layer_plan(needed_model(spec).path, spec.config.projection)
        return {
            "checkpoint": "last",
            "layers": layers,
            "dim_per_layer": dim,
            "gradient": "raw (no optimizer state)",
            "projection": spec.config.projection.model_dump(),
            "directions": "unit rows per layer",
            "norms": "unprojected, float32",
            "dtype": np.dtype(float_dtype(spec.config.dtype)).name,
        }

    def compute(
        self,
        root: Path,
        spec: BuildSpec,
        unit: ArtifactUnit,
        device: str | None,
        on_batch: ProgressCallback | None,
    ) -> dict[str, np.ndarray]:
        model = store_model(root, device)
        last = last_checkpoint(list(model.checkpoints.values()))
        layers, dim = layer_plan(needed_model(spec).path, spec.config.projection)
        with model.lock:
            featurizer = layer_featurizer(
                model, last.index, layers, dim, spec.config.batch_size, spec.config.batch_tokens
            )
            directions, norms = featurizer.featurize(
                TokenStore(root).slice(unit.start, unit.end), on_batch
            )
        files = self.unit_files(unit)
        return {files[0]: directions.astype(_dtype(spec)), files[1]: norms}


class UpdateDirections(ArtifactBuilder):
    name = UPDATE_DIRECTIONS
    kind = "update_directions"
    description = (
        "Influence Distillation features: projected, normalised Adam update directions "
        "a ⊙ g at the last checkpoint"
    )
    needs_model = True
    needs_checkpoints = True

    def params(self, spec: BuildSpec) -> dict:
        return {
            "checkpoint": "last",
            "direction": "a ⊙ g, a = ((1−β1)/(1−β1^(t+1))) / (sqrt(v/(1−β2^(t+1))) + 1e-8)",
            "projection": spec.config.projection.model_dump(),
            "normalised": True,
            "dtype": np.dtype(float_dtype(spec.config.dtype)).name,
        }

    def compute(
        self,
        root: Path,
        spec: BuildSpec,
        unit: ArtifactUnit,
        device: str | None,
        on_batch: ProgressCallback | None,
    ) -> dict[str, np.ndarray]:
        model = store_model(root, device)
        last = last_checkpoint(load_checkpoints(root / "checkpoints"))
        with model.lock:
            featurizer = update_featurizer(
                model, last, spec.config.batch_size, spec.config.batch_tokens
            )
            features = featurizer.featurize(
                TokenStore(root).slice(unit.start, unit.end), ("update",), on_batch
            )["update"]
        return {self.unit_files(unit)[0]: features.astype(_dtype(spec))}
