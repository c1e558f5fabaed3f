"""Datastore artifacts by name, and the calls that compute them and add them to a store.

A worker (or ``add_artifacts`` on one process) runs, for each artifact a store should gain:
``plan_artifact_units`` → ``compute_artifact_unit`` for every unit not yet
``artifact_unit_done`` (any order, any worker, reruns harmless) → ``finish_artifact`` once,
which checks every unit, records the files' sizes and checksums and adds the artifact to the
manifest. Units need only the prepared store (tokens, ``examples.jsonl``); ``finish`` needs
the manifest, so during a first build it runs after the index stage. Nothing the store
already holds is rewritten, and open stores keep serving (``Datastore.refresh``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from gradstore.artifacts.base import ArtifactBuilder, ArtifactUnit, ProgressCallback, UnitResult
from gradstore.artifacts.delift_kernel import DeliftKernel
from gradstore.artifacts.gradients import GradientFeatures
from gradstore.artifacts.hidden_states import HiddenStates
from gradstore.artifacts.influence import LayerGradients, UpdateDirections
from gradstore.artifacts.ngram_counts import NgramCounts
from gradstore.errors import InvalidInputError, MissingArtifactError, NotReadyError
from gradstore.files import atomic_save_npy, read_json, sha256_file
from gradstore.store.datastore import (
    ArtifactEntry,
    FileEntry,
    Manifest,
    load_build_spec,
    read_manifest,
    update_manifest,
    utc_now,
)

ARTIFACTS: dict[str, ArtifactBuilder] = {
    builder.name: builder
    for builder in (
        GradientFeatures("adam"),
        GradientFeatures("sgd"),
        HiddenStates(),
        NgramCounts(),
        LayerGradients(),
        UpdateDirections(),
        DeliftKernel(),
    )
}

__all__ = [
    "ARTIFACTS",
    "ArtifactUnit",
    "UnitResult",
    "add_artifacts",
    "artifact_unit_done",
    "compute_artifact_unit",
    "finish_artifact",
    "get_artifact",
    "missing_artifact_error",
    "plan_artifact_units",
]


def get_artifact(name: str) -> ArtifactBuilder:
    try:
        return ARTIFACTS[name]
    except KeyError:
        raise InvalidInputError(
            f"unknown artifact {name!r}; known: {', '.join(sorted(ARTIFACTS))}"
        ) from None


def missing_artifact_error(name: str, method: str | None = None) -> MissingArtifactError:
    """The 409 a query gets when its method needs an artifact the store lacks, with the fix."""
    builder = ARTIFACTS.get(name)
    what = f" ({builder.description})" if builder else ""
    needed = f", which method {method!r} needs" if method else ""
    if builder is not None and not builder.extendable:
        fix = (
            "gradient features are made by the build: create a datastore whose "
            f"pool_features include {name.split('.', 1)[-1]!r}"
        )
    else:
        asked = f'["{method}"]' if method else "[...]"
        fix = (
            f'add it to this store with POST /v1/datastores/{{id}}/methods {{"methods": {asked}}}'
            " (nothing the store holds is recomputed; its other methods keep answering)"
        )
    return MissingArtifactError(
        name, f"this datastore has no {name!r} artifact{what}{needed}; {fix}", method
    )


def _extendable(name: str) -> ArtifactBuilder:
    builder = get_artifact(name)
    if not builder.extendable:
        raise InvalidInputError(
            f"artifact {name!r} is made by the build itself; a ready store cannot gain it"
        )
    return builder


def plan_artifact_units(store_dir: str | Path, name: str) -> list[ArtifactUnit]:
    """Every unit of ``name`` for this (prepared) store, done or not, in row order."""
    root = Path(store_dir)
    builder = _extendable(name)
    spec = load_build_spec(root)
    n = len(read_json(root / "ids.json"))
    size = builder.unit_rows(spec)
    return [ArtifactUnit(name, start, min(start + size, n)) for start in range(0, n, size)]


def artifact_unit_done(store_dir: str | Path, unit: ArtifactUnit) -> bool:
    root = Path(store_dir)
    return all((root / f).exists() for f in _extendable(unit.artifact).unit_files(unit))


def compute_artifact_unit(
    store_dir: str | Path,
    unit: ArtifactUnit,
    device: str | None = None,
    on_batch: ProgressCallback | None = None,
) -> UnitResult:
    """Compute one unit and write its files atomically (identical bytes on a rerun)."""
    started = time.perf_counter()
    root = Path(store_dir)
    builder = _extendable(unit.artifact)
    arrays = builder.compute(root, load_build_spec(root), unit, device, on_batch)
    files = {
        relative: atomic_save_npy(root / relative, array) for relative, array in arrays.items()
    }
    return UnitResult(unit, files, unit.end - unit.start, time.perf_counter() - started)


def finish_artifact(store_dir: str | Path, name: str) -> Manifest:
    """Check every unit, write the artifact's summary files and add it to the manifest.

    Idempotent: a store that already lists the artifact is returned unchanged.
    """
    root = Path(store_dir)
    builder = _extendable(name)
    if name in read_manifest(root).artifacts:
        return read_manifest(root)
    spec = load_build_spec(root)
    units = plan_artifact_units(root, name)
    missing = [u.name for u in units if not artifact_unit_done(root, u)]
    if missing:
        raise NotReadyError(
            f"{len(missing)} units of artifact {name!r} are not done, e.g. {missing[0]}"
        )
    files = [f for unit in units for f in builder.unit_files(unit)]
    files += builder.finish(root, spec, units)
    entries = {
        relative: FileEntry(
            sha256=sha256_file(root / relative), size=(root / relative).stat().st_size
        )
        for relative in files
    }
    entry = ArtifactEntry(
        kind=builder.kind, params=builder.params(spec), files=files, created_at=utc_now()
    )

    def add(manifest: Manifest) -> None:
        manifest.files.update(entries)
        manifest.artifacts[name] = entry

    return update_manifest(root, add)


def add_artifacts(
    store_dir: str | Path,
    names: Sequence[str],
    device: str | None = None,
    progress: bool = False,
) -> Manifest:
    """Give a ready store these artifacts on this process (what the workers do in units)."""
    from tqdm import tqdm

    root = Path(store_dir)
    manifest = read_manifest(root)
    for name in names:
        if name in manifest.artifact_names():
            continue
        units = [u for u in plan_artifact_units(root, name) if not artifact_unit_done(root, u)]
        total = sum(u.end - u.start for u in units)
        # units already written (update directions by featurize) get no empty bar
        with tqdm(total=total, desc=name, unit="ex", disable=not progress or not units) as bar:
            for unit in units:
                compute_artifact_unit(root, unit, device=device, on_batch=bar.update)
        manifest = finish_artifact(root, name)
    return manifest
