"""The build's state machine: every kind of work unit, declared once, in ``UNITS``.

A kind is its payload model (``gradstore.db.units``), the store states it works on
(``still_wanted``), ``run`` (the heavy work, outside any transaction; it writes files
atomically and never the database) and ``on_done`` (the transition, inside the short
transaction that marks the unit done: the next units, progress, the store's status).

A build runs warmup → featurize shards → index → (artifact units → finish) when its
methods need artifacts beyond the gradient features; a build whose methods need neither the
warmup nor gradient features (BM25, DSIR, random, RDS+) runs prepare → (artifact units →
finish), with a model or, for the text methods, without
(``gradstore.selection.needs.needs_warmup``).
A build's last unit ends with a full verification of the store (db/integrity.py): a store
is ready only once every byte matched its manifest, and its fingerprint is recorded then.
``extend`` starts adding methods to a ready store, ``verify`` re-checks one.

Extra artifacts (RDS+ embeddings, DELIFT's kernel, ...) are leased in row units like the
featurize shards, so several workers share them, a killed worker's unit is taken again and
written units are kept. One plan of them (a build's, or one ``extend`` request's) has its
own ``plan`` number; its ``finish`` unit is added by whoever completes its last unit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gradstore import build
from gradstore.api_models import DatastoreStatus
from gradstore.artifacts import (
    ArtifactUnit,
    artifact_unit_done,
    compute_artifact_unit,
    finish_artifact,
)
from gradstore.config import BuildConfig
from gradstore.db import integrity
from gradstore.db.jobs import next_plan
from gradstore.db.model_roots import resolve_directory
from gradstore.db.models import Datastore, UnitState, WorkUnit, utcnow
from gradstore.db.queue import Claim
from gradstore.db.units import (
    PAYLOADS,
    ExtendPayload,
    NoPayload,
    PlanPayload,
    UnitKind,
    new_unit,
    payload_of,
)
from gradstore.db.units import still_wanted as store_wanted
from gradstore.errors import ManifestMismatchError
from gradstore.files import read_json
from gradstore.selection.needs import store_methods
from gradstore.store.datastore import Datastore as GradstoreDatastore
from gradstore.store.datastore import Shard, load_build_spec, read_manifest

P = TypeVar("P", bound=BaseModel)


@dataclass(frozen=True)
class UnitRun:
    """What ``run`` gets: the claim and its store's row, read before the work started."""

    claim: Claim
    root: Path
    dataset_path: str
    dataset_sha256: str
    model_path: str | None
    config: BuildConfig
    warmup_from: list[str]
    device: str | None
    on_batch: Callable[[int], None]
    progress: bool = False
    model_roots: list[Path] | None = None


@dataclass(frozen=True)
class UnitType(Generic[P]):
    """One kind of unit. ``run`` returns the store's fingerprint when it verified it (the
    last unit of a build or of an extension), else None; ``on_done`` gets it back."""

    kind: UnitKind
    payload: type[P]
    run: Callable[[UnitRun, P], str | None]
    on_done: Callable[[Session, Datastore, Claim, P, str | None], None]
    starts: DatastoreStatus | None = None  # a queued store's status once this is claimed

    def still_wanted(self, store: Datastore | None) -> bool:
        return store_wanted(store, self.kind)

    def payload_of(self, claim: Claim) -> P:
        return payload_of(self.kind, claim.payload, self.payload)


def missing_artifacts(root: Path, methods: list[str]) -> list[str]:
    """The artifacts ``methods`` need beyond the gradient features that the store lacks."""
    from gradstore.selection import extra_artifacts

    have = read_manifest(root).artifact_names()
    return [name for name in extra_artifacts(methods) if name not in have]


# prepare: the pool (tokenised when there is a model), then the manifest: a build whose
# methods read no gradient features; its artifact units follow, or it is verified and ready


def _prepare_pool(job: UnitRun) -> None:
    if job.model_roots:  # rows written before the roots were set are held to them too
        if job.model_path is not None:
            resolve_directory(job.model_path, job.model_roots, "model.path")
        for directory in job.warmup_from:
            resolve_directory(directory, job.model_roots, "warmup_from")
    build.prepare(job.root, job.dataset_path, job.model_path, job.config, job.warmup_from)
    if load_build_spec(job.root).dataset_sha256 != job.dataset_sha256:
        raise ManifestMismatchError(
            "the dataset's stored file no longer matches the sha256 recorded at upload"
        )


def _run_prepare(job: UnitRun, payload: NoPayload) -> str | None:
    _prepare_pool(job)
    return _run_index(job, payload)


def _prepare_done(
    session: Session, store: Datastore, claim: Claim, payload: NoPayload, fingerprint
) -> None:
    store.skipped = read_json(Path(store.path) / "skipped.json")
    _index_done(session, store, claim, payload, fingerprint)


# warmup: tokenise the pool, train (or import) the warmup checkpoints; plan the shards


def _run_warmup(job: UnitRun, _: NoPayload) -> None:
    _prepare_pool(job)
    build.run_warmup_stage(job.root, device=job.device, progress=job.progress)
    return None


def _warmup_done(session: Session, store: Datastore, claim: Claim, _: NoPayload, __) -> None:
    root = Path(store.path)
    shards = build.plan_shards(root)
    for shard in shards:
        session.add(
            new_unit(
                store.id,
                UnitKind.FEATURIZE,
                request_id=store.request_id,
                checkpoint=shard.checkpoint,
                start=shard.start,
                end=shard.end,
            )
        )
    store.status = DatastoreStatus.FEATURIZE
    store.progress_total = sum(s.end - s.start for s in shards)
    store.progress_done = 0
    store.skipped = read_json(root / "skipped.json")
    store.num_examples = len(read_json(root / "ids.json"))


# featurize: one checkpoint × row range; the last one adds the index unit


def _run_featurize(job: UnitRun, _: NoPayload) -> None:
    shard = Shard(job.claim.checkpoint, job.claim.start, job.claim.end)
    build.featurize_shard(job.root, shard, device=job.device, on_batch=job.on_batch)
    return None


def _featurize_done(session: Session, store: Datastore, claim: Claim, _: NoPayload, __) -> None:
    shard_units = (WorkUnit.datastore_id == store.id, WorkUnit.kind == UnitKind.FEATURIZE)
    _stage_progress(session, store, shard_units)
    if not _remaining(session, shard_units):
        index = new_unit(store.id, UnitKind.INDEX, request_id=store.request_id)
        if _add_once(session, index):
            store.status = DatastoreStatus.INDEX


# index: the manifest; the build ends here unless its methods need more artifacts


def _run_index(job: UnitRun, _: NoPayload) -> str | None:
    build.build_index(job.root)
    if missing_artifacts(job.root, store_methods(job.config)):
        return None  # the artifact units follow; the finish unit verifies
    return integrity.verify(job.root)


def _index_done(
    session: Session, store: Datastore, claim: Claim, _: NoPayload, fingerprint: str | None
) -> None:
    root = Path(store.path)
    missing = missing_artifacts(root, store_methods(BuildConfig.model_validate(store.config)))
    if missing:
        _plan_artifacts(session, store, root, PlanPayload(artifacts=missing), store.request_id)
        store.status = DatastoreStatus.ARTIFACTS
    else:
        _build_ready(store, root, fingerprint)


# artifact: rows [start, end) of one artifact of a plan; the last one adds the finish unit


def _run_artifact(job: UnitRun, _: PlanPayload) -> None:
    rows = ArtifactUnit(job.claim.artifact, job.claim.start, job.claim.end)
    if not artifact_unit_done(job.root, rows):  # a retry after its worker wrote it and died
        compute_artifact_unit(job.root, rows, device=job.device, on_batch=job.on_batch)
    return None


def _artifact_done(session: Session, store: Datastore, claim: Claim, plan: PlanPayload, __) -> None:
    """Rows done (a build's stage progress); after the plan's last unit, its finish unit."""
    in_plan = (
        WorkUnit.datastore_id == store.id,
        WorkUnit.kind == UnitKind.ARTIFACT,
        WorkUnit.plan == claim.plan,
    )
    if not plan.extension:
        _stage_progress(session, store, in_plan)
    if not _remaining(session, in_plan):
        finish = new_unit(
            store.id, UnitKind.FINISH, plan, request_id=claim.request_id, plan=claim.plan
        )
        _add_once(session, finish)


# finish: the plan's artifacts join the manifest; the store is verified and (still) ready


def _run_finish(job: UnitRun, plan: PlanPayload) -> str:
    for name in plan.artifacts:
        finish_artifact(job.root, name)  # checksums every unit's files as it adds them
    if plan.extension:  # the rest was verified by the extend unit
        return integrity.fingerprint(GradstoreDatastore(job.root, read_manifest(job.root)))
    return integrity.verify(job.root)


def _finish_done(
    session: Session, store: Datastore, claim: Claim, plan: PlanPayload, fingerprint: str | None
) -> None:
    if plan.extension:
        _gained(store, plan.methods, fingerprint)
    else:
        _build_ready(store, Path(store.path), fingerprint)


# verify: every byte of a ready (or integrity-failed) store against its manifest


def _run_verify(job: UnitRun, _: NoPayload) -> str:
    return integrity.verify(job.root)


def _verify_done(
    session: Session, store: Datastore, claim: Claim, _: NoPayload, fingerprint: str | None
) -> None:
    _verified(store, fingerprint)


# extend: check a ready store's files, then plan the artifacts of the methods it gains


def _run_extend(job: UnitRun, _: ExtendPayload) -> str:
    return integrity.verify(job.root)  # the files the store has are checked first


def _extend_done(
    session: Session,
    store: Datastore,
    claim: Claim,
    request: ExtendPayload,
    fingerprint: str | None,
) -> None:
    root = Path(store.path)
    missing = missing_artifacts(root, request.methods)
    if missing:
        plan = PlanPayload(artifacts=missing, methods=request.methods, extension=True)
        _plan_artifacts(session, store, root, plan, claim.request_id)
    else:
        _gained(store, request.methods, fingerprint)


UNITS: dict[UnitKind, UnitType[Any]] = {
    unit.kind: unit
    for unit in (
        UnitType(UnitKind.PREPARE, NoPayload, _run_prepare, _prepare_done, DatastoreStatus.INDEX),
        UnitType(UnitKind.WARMUP, NoPayload, _run_warmup, _warmup_done, DatastoreStatus.WARMUP),
        UnitType(UnitKind.FEATURIZE, NoPayload, _run_featurize, _featurize_done),
        UnitType(UnitKind.INDEX, NoPayload, _run_index, _index_done),
        UnitType(UnitKind.ARTIFACT, PlanPayload, _run_artifact, _artifact_done),
        UnitType(UnitKind.FINISH, PlanPayload, _run_finish, _finish_done),
        UnitType(UnitKind.VERIFY, NoPayload, _run_verify, _verify_done),
        UnitType(UnitKind.EXTEND, ExtendPayload, _run_extend, _extend_done),
    )
}
assert {k: u.payload for k, u in UNITS.items()} == PAYLOADS, "one payload model per kind"


def unit_type(kind: str) -> UnitType[Any]:
    try:
        return UNITS[UnitKind(kind)]
    except ValueError:
        raise ValueError(f"unknown unit kind {kind!r}") from None


# transitions shared by several kinds


def _build_ready(store: Datastore, root: Path, fingerprint: str | None) -> None:
    manifest = GradstoreDatastore.open(root, verify=False).manifest
    store.methods = store_methods(BuildConfig.model_validate(store.config))
    store.dim = manifest.dim or None  # no gradient features: no dimension
    store.num_examples = manifest.num_examples
    store.checkpoints = [
        {"index": c.index, "learning_rate": c.learning_rate, "weight": c.weight}
        for c in manifest.checkpoints
    ]
    _verified(store, fingerprint)


def _gained(store: Datastore, methods: list[str], fingerprint: str | None) -> None:
    store.methods = sorted(set(store.methods or []) | set(methods))
    _verified(store, fingerprint)


def _verified(store: Datastore, fingerprint: str | None) -> None:
    """Every byte matched: serve the store while its files keep this fingerprint."""
    if fingerprint is None:
        raise ValueError("a verification must record the fingerprint it found")
    store.verified_fingerprint = fingerprint
    store.verified_at = utcnow()
    store.status = DatastoreStatus.READY
    store.error = None


def _plan_artifacts(
    session: Session, store: Datastore, root: Path, plan: PlanPayload, request_id: str | None
) -> None:
    """One artifact unit per row range of each artifact of ``plan``, under a new number;
    ``request_id``: the request that asked for them (the build's, or an extension's)."""
    from gradstore.artifacts import plan_artifact_units

    number = next_plan(session, store.id)
    total = 0
    for name in plan.artifacts:
        for part in plan_artifact_units(root, name):
            session.add(
                new_unit(
                    store.id,
                    UnitKind.ARTIFACT,
                    plan,
                    request_id=request_id,
                    plan=number,
                    artifact=name,
                    start=part.start,
                    end=part.end,
                )
            )
            total += part.end - part.start
    if not plan.extension:  # the stage's own rows and rate, not featurize's
        store.progress_total, store.progress_done, store.examples_per_s = total, 0, None


def _remaining(session: Session, units: tuple) -> int:
    return int(
        session.scalar(select(func.count()).where(*units, WorkUnit.state != UnitState.DONE)) or 0
    )


def _stage_progress(session: Session, store: Datastore, units: tuple) -> None:
    """Rows done in the stage's ``units``, and the rate of all workers together: rows over
    wall time since the units were planned (what the ETA of the stage divides by)."""
    done_rows = session.scalar(
        select(func.sum(WorkUnit.end - WorkUnit.start)).where(
            *units, WorkUnit.state == UnitState.DONE
        )
    )
    planned_at = session.scalar(select(func.min(WorkUnit.created_at)).where(*units))
    store.progress_done = int(done_rows or 0)
    elapsed = (utcnow() - planned_at).total_seconds() if planned_at else 0.0
    if elapsed > 0:
        store.examples_per_s = round(store.progress_done / elapsed, 2)


def _add_once(session: Session, unit: WorkUnit) -> bool:
    """Add the unit that follows a stage's last unit; False when another worker, finishing
    another of its last units at the same moment, added it first (the unique key says)."""
    try:
        with session.begin_nested():
            session.add(unit)
    except IntegrityError:
        return False
    return True
