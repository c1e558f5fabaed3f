"""The ``hidden_states`` artifact: RDS+ embeddings of every pool example (fp16 row shards).

Each unit embeds its rows' stored tokens (the training encoding, EOS included) with the
base model — no adapter, so a store gains it without touching its checkpoints or gradients.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gradstore.artifacts.base import ArtifactBuilder, ArtifactUnit, ProgressCallback
from gradstore.features.embeddings import HiddenStateEncoder
from gradstore.store.codes import float_dtype
from gradstore.store.datastore import BuildSpec, TokenStore
from gradstore.store.model_pool import store_base_model


class HiddenStates(ArtifactBuilder):
    name = "hidden_states"
    kind = "embeddings"
    description = "RDS+ embeddings: position-weighted mean-pooled final hidden states"
    needs_model = True

    def params(self, spec: BuildSpec) -> dict:
        return {
            "model": "base (no adapter)",
            "layer": "final (after the final norm)",
            "pooling": "position-weighted mean, w_t ∝ t",
            "normalised": True,
            "dtype": np.dtype(float_dtype(spec.config.dtype)).name,
            "encoding": "pool (training encoding, EOS included)",
        }

    def compute(
        self,
        root: Path,
        spec: BuildSpec,
        unit: ArtifactUnit,
        device: str | None,
        on_batch: ProgressCallback | None,
    ) -> dict[str, np.ndarray]:
        examples = TokenStore(root).slice(unit.start, unit.end)
        model, as_base = store_base_model(root, device)
        encoder = HiddenStateEncoder(
            model.model, model.pad_token_id, spec.config.batch_size, as_base,
            batch_tokens=spec.config.batch_tokens,
        )  # fmt: skip
        with model.lock:
            vectors = encoder.embed(examples, on_batch)
        dtype = float_dtype(spec.config.dtype)
        return {self.unit_files(unit)[0]: vectors.astype(dtype)}
