"""What an artifact is: a named part of a datastore, computed in row-range units.

Every artifact is computed like the featurize shards: a unit covers rows [start, end) of
the pool, writes its files atomically (the same inputs give the same bytes, so a unit run
twice or by two workers is harmless) and is done when its files exist. ``finish`` adds the
artifact to the manifest of a ready store, with the size and sha256 of each file.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from gradstore.store.datastore import BuildSpec

ProgressCallback = Callable[[int], None]


@dataclass(frozen=True)
class ArtifactUnit:
    """One unit of work of an artifact: rows [start, end) of the pool."""

    artifact: str
    start: int
    end: int

    @property
    def name(self) -> str:
        return f"{self.artifact}/{self.start:09d}-{self.end:09d}"


@dataclass(frozen=True)
class UnitResult:
    unit: ArtifactUnit
    files: dict[str, str]  # relative path → sha256
    rows: int
    seconds: float


class ArtifactBuilder(ABC):
    """How one artifact is planned, computed unit by unit, and finished."""

    name: ClassVar[str]
    kind: ClassVar[str]
    description: ClassVar[str]  # what it holds, for errors and docs
    extendable: ClassVar[bool] = True  # can a ready store gain it?
    needs_model: ClassVar[bool] = False  # does computing a unit load the base model?
    # does computing a unit need the warmup checkpoints (so it runs after warmup)?
    needs_checkpoints: ClassVar[bool] = False
    # do units read the finished gradient features (the manifest)? then a worker schedules
    # them after the index stage, not beside warmup and featurize
    needs_features: ClassVar[bool] = False

    def unit_rows(self, spec: BuildSpec) -> int:
        return spec.config.shard_size

    def directory(self) -> str:
        return f"artifacts/{self.name}"

    def unit_stem(self, unit: ArtifactUnit) -> str:
        """The unit's path without extension: its rows, zero-padded, in the directory."""
        return f"{self.directory()}/{unit.start:09d}-{unit.end:09d}"

    def unit_files(self, unit: ArtifactUnit) -> list[str]:
        """Relative paths a unit writes (default: one array); done when they all exist."""
        return [f"{self.unit_stem(unit)}.npy"]

    @abstractmethod
    def params(self, spec: BuildSpec) -> dict:
        """What determines the artifact's bytes, recorded in the manifest."""

    @abstractmethod
    def compute(
        self,
        root: Path,
        spec: BuildSpec,
        unit: ArtifactUnit,
        device: str | None,
        on_batch: ProgressCallback | None,
    ) -> dict[str, np.ndarray]:
        """The unit's arrays by relative path (written atomically by the caller)."""

    def finish(self, root: Path, spec: BuildSpec, units: list[ArtifactUnit]) -> list[str]:
        """Files made from all units once they are done (written atomically); default none."""
        return []
