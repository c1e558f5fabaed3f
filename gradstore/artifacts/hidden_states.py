"""The ``hidden_states`` artifact: RDS+ embeddings of every pool example (fp16 row shards).

Each unit embeds its rows' stored tokens (the training encoding, EOS included) with the
base model — no adapter, so a store gains it without touching its checkpoints or gradients.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from gradstore.artifacts.base import ArtifactBuilder, ArtifactUnit, ProgressCallback
from gradstore.embeddings import HiddenStateEncoder
from gradstore.store import BuildSpec, TokenStore


@lru_cache(maxsize=1)
def _base_model(model_dir: str, device: str | None):
    from gradstore.modeling import load_base_model, load_tokenizer
    from gradstore.tokenization import pad_token_id

    return load_base_model(model_dir, device), pad_token_id(load_tokenizer(model_dir))


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
            "dtype": spec.config.dtype,
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
        model, pad = _base_model(spec.model.path, device)
        vectors = HiddenStateEncoder(model, pad, spec.config.batch_size).embed(examples, on_batch)
        dtype = np.float16 if spec.config.dtype == "float16" else np.float32
        return {self.unit_files(unit)[0]: vectors.astype(dtype)}
