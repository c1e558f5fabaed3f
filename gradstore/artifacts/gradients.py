"""The gradient features as artifacts: made by the build's warmup and featurize stages.

They are declared here so that methods can name them like any other artifact; a ready store
cannot gain a gradient kind it was not built with (that would need the warmup checkpoints'
gradients again), so these are not extendable.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gradstore.artifacts.base import ArtifactBuilder, ArtifactUnit, ProgressCallback
from gradstore.store.datastore import BuildSpec, gradient_artifact


class GradientFeatures(ArtifactBuilder):
    kind = "gradient_features"
    extendable = False
    needs_model = True

    def __init__(self, feature_kind: str):
        self.feature_kind = feature_kind
        self.name = gradient_artifact(feature_kind)  # type: ignore[misc]
        self.description = (  # type: ignore[misc]
            f"{'Adam-preconditioned' if feature_kind == 'adam' else 'plain'} projected "
            "LoRA gradient features"
        )

    def unit_files(self, unit: ArtifactUnit) -> list[str]:
        raise NotImplementedError("gradient features are written by the featurize shards")

    def params(self, spec: BuildSpec) -> dict:
        return {
            "feature_kind": self.feature_kind,
            "projection": spec.config.projection.model_dump(),
        }

    def compute(
        self,
        root: Path,
        spec: BuildSpec,
        unit: ArtifactUnit,
        device: str | None,
        on_batch: ProgressCallback | None,
    ) -> dict[str, np.ndarray]:
        raise NotImplementedError("gradient features are computed by gradstore.build")
