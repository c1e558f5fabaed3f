"""What each kind of unit does, and how finishing it moves its build to the next stage.

The heavy work (gradstore.build) happens outside any database transaction; the transition
after it (mark done, add the next units, update progress) is one short transaction. A
build runs warmup → featurize shards → index → (artifact units → finish) when its methods
need artifacts beyond the gradient features; its last unit ends with a full verification
of the store (db/integrity.py): a store is ready only once every byte matched its
manifest, and its fingerprint is recorded then.

Extra artifacts (RDS+ embeddings, DELIFT's kernel, ...) are leased in row units like the
featurize shards, so several workers share them, a killed worker's unit is taken again and
written units are kept. One plan of them (a build's, or one ``extend`` request's) holds
consecutive ``checkpoint`` slots, one per artifact; its ``finish`` unit (checkpoint = the
plan's first slot) is added by whoever completes the plan's last unit.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeGuard

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from typing_extensions import TypeIs

from gradstore import build
from gradstore.api_models import ACTIVE_BUILD, DatastoreStatus, UnitKind
from gradstore.artifacts import (
    ArtifactUnit,
    artifact_unit_done,
    compute_artifact_unit,
    finish_artifact,
)
from gradstore.config import BuildConfig
from gradstore.db import integrity
from gradstore.db.model_roots import resolve_directory
from gradstore.db.models import Dataset, Datastore, UnitState, WorkUnit, utcnow
from gradstore.db.queue import PLAN_UNITS, VERIFIABLE, Claim, complete, fail_plan, plan_slots
from gradstore.errors import ManifestMismatchError
from gradstore.files import read_json
from gradstore.store import Datastore as GradstoreDatastore
from gradstore.store import Shard, load_build_spec, read_manifest


class BuildGone(Exception):
    """The build was cancelled, failed or deleted while its unit waited or ran."""


def is_active(store: Datastore | None) -> TypeIs[Datastore]:
    return store is not None and store.status in ACTIVE_BUILD and not store.cancel_requested


def still_wanted(store: Datastore | None, claim: Claim) -> TypeGuard[Datastore]:
    """The unit's store is still there, in a state this kind of unit works on: an active
    build; a ready (or integrity-failed) store for a verification; a ready store that is
    gaining methods for an extension."""
    if claim.kind == UnitKind.VERIFY:
        return store is not None and store.status in VERIFIABLE
    if claim.kind == UnitKind.EXTEND:
        return (
            store is not None
            and store.status == DatastoreStatus.READY
            and not store.cancel_requested
        )
    if claim.kind in PLAN_UNITS:  # a build's, or an extension of a ready store
        return (
            store is not None
            and store.status in (*ACTIVE_BUILD, DatastoreStatus.READY)
            and not store.cancel_requested
        )
    return is_active(store)


def store_methods(config: BuildConfig) -> list[str]:
    """The methods a store is built to serve: its config's, else the default set."""
    from gradstore.selection import DEFAULT_METHODS

    return list(config.methods) if config.methods is not None else list(DEFAULT_METHODS)


def run_unit(
    session_factory,
    claim: Claim,
    device: str | None,
    on_batch: Callable[[int], None],
    progress: bool = False,
    model_roots: list[Path] | None = None,
) -> str | None:
    """The unit's artifacts, written atomically; no database writes here.

    Returns the store's fingerprint after a verification (verify and extend units, and the
    last unit of a build: index, or finish when it has extra artifacts) or after a finish
    unit of an extension added to the manifest.
    """
    with session_factory() as session:
        store = session.get(Datastore, claim.datastore_id)
        if not still_wanted(store, claim):
            raise BuildGone(f"datastore {claim.datastore_id} is no longer being built")
        dataset = session.get(Dataset, store.dataset_id)
        root, model_path = Path(store.path), store.model_path
        config = BuildConfig.model_validate(store.config)
        warmup_from = list(store.warmup_from or [])
        unit = session.get(WorkUnit, claim.id)
        payload = dict(unit.payload or {}) if unit is not None else {}
    if claim.kind == UnitKind.WARMUP:
        if model_roots:  # rows written before the roots were set are held to them too
            resolve_directory(model_path, model_roots, "model.path")
            for directory in warmup_from:
                resolve_directory(directory, model_roots, "warmup_from")
        build.prepare(root, dataset.path, model_path, config, warmup_from)
        if load_build_spec(root).dataset_sha256 != dataset.sha256:
            raise ManifestMismatchError(
                "the dataset's stored file no longer matches the sha256 recorded at upload"
            )
        build.run_warmup_stage(root, device=device, progress=progress)
    elif claim.kind == UnitKind.FEATURIZE:
        shard = Shard(claim.checkpoint, claim.start, claim.end)
        build.featurize_shard(root, shard, device=device, on_batch=on_batch)
    elif claim.kind == UnitKind.INDEX:
        build.build_index(root)
        if missing_artifacts(root, store_methods(config)):
            return None  # the artifact units follow; the finish unit verifies
        return integrity.verify(root)
    elif claim.kind == UnitKind.VERIFY:
        return integrity.verify(root)
    elif claim.kind == UnitKind.EXTEND:
        # the files the store has are checked before anything is added
        return integrity.verify(root)
    elif claim.kind == UnitKind.ARTIFACT:
        rows = ArtifactUnit(payload["artifact"], claim.start, claim.end)
        if not artifact_unit_done(root, rows):  # a retry after its worker wrote it and died
            compute_artifact_unit(root, rows, device=device, on_batch=on_batch)
    elif claim.kind == UnitKind.FINISH:
        for name in payload["artifacts"]:
            finish_artifact(root, name)  # checksums every unit's files as it adds them
        if payload.get("extension"):  # the rest was verified by the extend unit
            return integrity.fingerprint(GradstoreDatastore(root, read_manifest(root)))
        return integrity.verify(root)
    else:
        raise ValueError(f"unknown unit kind {claim.kind!r}")
    return None


def missing_artifacts(root: Path, methods: list[str]) -> list[str]:
    """The artifacts ``methods`` need beyond the gradient features that the store lacks."""
    from gradstore.selection import extra_artifacts

    have = read_manifest(root).artifact_names()
    return [name for name in extra_artifacts(methods) if name not in have]


def mark_started(session: Session, claim: Claim) -> None:
    """queued → warmup, in one conditional statement so that it never undoes a cancel."""
    if claim.kind == UnitKind.WARMUP:
        session.execute(
            update(Datastore)
            .where(
                Datastore.id == claim.datastore_id,
                Datastore.status == DatastoreStatus.QUEUED,
                Datastore.cancel_requested.is_(False),
            )
            .values(status=DatastoreStatus.WARMUP)
        )


def finish_unit(
    session: Session, claim: Claim, owner: str, seconds: float, fingerprint: str | None = None
) -> bool:
    """Mark the unit done and advance its build, in the caller's transaction.

    False when the build is no longer active (cancelled, failed or deleted meanwhile): then
    nothing advances, and the caller removes what the unit wrote. The datastore row is
    locked first (PostgreSQL; SQLite has one writer anyway), so two workers finishing the
    last two shards at once cannot both see the other's shard as unfinished.
    """
    store = session.get(Datastore, claim.datastore_id, with_for_update=True)
    if not still_wanted(store, claim):
        return False
    if not complete(session, claim, owner, seconds):
        return True  # the lease was lost; its new holder writes the same bytes and advances
    session.refresh(store)  # SQLite: under the write lock now, so a racing cancel shows
    if not still_wanted(store, claim):
        return False
    if claim.kind == UnitKind.VERIFY:
        _verified(store, fingerprint)
        return True
    root = Path(store.path)
    unit = session.get(WorkUnit, claim.id)
    payload = dict(unit.payload or {}) if unit is not None else {}
    if claim.kind == UnitKind.WARMUP:
        _plan_featurize(session, store, root)
    elif claim.kind == UnitKind.FEATURIZE:
        _featurize_progress(session, store)
    elif claim.kind == UnitKind.INDEX:
        missing = missing_artifacts(root, store_methods(BuildConfig.model_validate(store.config)))
        if missing:
            _plan_artifacts(session, store, root, missing, {})
            store.status = DatastoreStatus.ARTIFACTS
        else:
            _build_ready(store, root, fingerprint)
    elif claim.kind == UnitKind.EXTEND:
        added = payload.get("methods", [])
        missing = missing_artifacts(root, added)
        if missing:
            _plan_artifacts(session, store, root, missing, {"methods": added, "extension": True})
        else:
            _gained(store, added, fingerprint)
    elif claim.kind == UnitKind.ARTIFACT:
        _artifact_progress(session, store, payload)
    elif claim.kind == UnitKind.FINISH:
        if payload.get("extension"):
            _gained(store, payload.get("methods", []), fingerprint)
        else:
            _build_ready(store, root, fingerprint)
    return True


def _build_ready(store: Datastore, root: Path, fingerprint: str | None) -> None:
    manifest = GradstoreDatastore.open(root, verify=False).manifest
    store.methods = store_methods(BuildConfig.model_validate(store.config))
    store.dim = manifest.dim
    store.num_examples = manifest.num_examples
    store.checkpoints = [
        {"index": c.index, "learning_rate": c.learning_rate, "weight": c.weight}
        for c in manifest.checkpoints
    ]
    _verified(store, fingerprint)


def _gained(store: Datastore, methods: list[str], fingerprint: str | None) -> None:
    store.methods = sorted(set(store.methods or []) | set(methods))
    _verified(store, fingerprint)


def _plan_artifacts(
    session: Session, store: Datastore, root: Path, names: list[str], extra: dict
) -> None:
    """One artifact unit per row range of each artifact, in slots after any earlier plan's.

    ``extra`` (an extension's methods) rides in every unit's payload, so the methods stay
    pending until the plan's finish unit is done and a failure can find the whole plan.
    """
    from gradstore.artifacts import plan_artifact_units

    used = session.scalar(
        select(func.max(WorkUnit.checkpoint)).where(
            WorkUnit.datastore_id == store.id, WorkUnit.kind == UnitKind.ARTIFACT
        )
    )
    first = 0 if used is None else used + 1
    plan = {"plan": first, "artifacts": names, **extra}
    total = 0
    for slot, name in enumerate(names, start=first):
        for part in plan_artifact_units(root, name):
            session.add(
                WorkUnit(
                    datastore_id=store.id,
                    kind=UnitKind.ARTIFACT,
                    checkpoint=slot,
                    start=part.start,
                    end=part.end,
                    request_id=store.request_id,
                    payload={**plan, "artifact": name},
                )
            )
            total += part.end - part.start
    if not extra.get("extension"):  # the stage's own rows and rate, not featurize's
        store.progress_total, store.progress_done, store.examples_per_s = total, 0, None


def _artifact_progress(session: Session, store: Datastore, payload: dict) -> None:
    """Rows done (a build's stage progress); after the plan's last unit, its finish unit."""
    first, last = plan_slots(payload)
    in_plan = (
        WorkUnit.datastore_id == store.id,
        WorkUnit.kind == UnitKind.ARTIFACT,
        WorkUnit.checkpoint.between(first, last),
    )
    if not payload.get("extension"):
        _stage_progress(session, store, in_plan)
    remaining = session.scalar(
        select(func.count()).where(*in_plan, WorkUnit.state != UnitState.DONE)
    )
    if remaining:
        return
    finish = {k: v for k, v in payload.items() if k != "artifact"}
    _add_once(
        session,
        WorkUnit(
            datastore_id=store.id,
            kind=UnitKind.FINISH,
            checkpoint=first,
            request_id=store.request_id,
            payload=finish,
        ),
    )


def _verified(store: Datastore, fingerprint: str | None) -> None:
    """Every byte matched: serve the store while its files keep this fingerprint."""
    if fingerprint is None:
        raise ValueError("a verification must record the fingerprint it found")
    store.verified_fingerprint = fingerprint
    store.verified_at = utcnow()
    store.status = DatastoreStatus.READY
    store.error = None


def fail_verification(session: Session, claim: Claim, owner: str, reason: str) -> None:
    """The bytes do not match: the store is failed (until verified again), the unit ends."""
    session.execute(
        update(WorkUnit)
        .where(WorkUnit.id == claim.id, WorkUnit.lease_owner == owner)
        .values(state=UnitState.FAILED, error=reason, lease_expires_at=None)
    )
    session.execute(
        update(Datastore)
        .where(Datastore.id == claim.datastore_id, Datastore.status.in_(VERIFIABLE))
        .values(status=DatastoreStatus.FAILED, error=f"integrity check failed: {reason}")
    )


def _plan_featurize(session: Session, store: Datastore, root: Path) -> None:
    shards = build.plan_shards(root)
    for shard in shards:
        session.add(
            WorkUnit(
                datastore_id=store.id,
                kind=UnitKind.FEATURIZE,
                checkpoint=shard.checkpoint,
                start=shard.start,
                end=shard.end,
                request_id=store.request_id,
            )
        )
    store.status = DatastoreStatus.FEATURIZE
    store.progress_total = sum(s.end - s.start for s in shards)
    store.progress_done = 0
    store.skipped = read_json(root / "skipped.json")
    store.num_examples = len(read_json(root / "ids.json"))


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


def _featurize_progress(session: Session, store: Datastore) -> None:
    shard_units = (WorkUnit.datastore_id == store.id, WorkUnit.kind == UnitKind.FEATURIZE)
    _stage_progress(session, store, shard_units)
    remaining = session.scalar(
        select(func.count()).where(*shard_units, WorkUnit.state != UnitState.DONE)
    )
    if remaining == 0:
        _add_index_unit(session, store)


def _add_index_unit(session: Session, store: Datastore) -> None:
    index = WorkUnit(datastore_id=store.id, kind=UnitKind.INDEX, request_id=store.request_id)
    if _add_once(session, index):
        store.status = DatastoreStatus.INDEX


def _add_once(session: Session, unit: WorkUnit) -> bool:
    """Add the unit that follows a stage's last unit; False when another worker, finishing
    another of its last units at the same moment, added it first (the unique key says)."""
    try:
        with session.begin_nested():
            session.add(unit)
    except IntegrityError:
        return False
    return True


def is_extension(session: Session, claim: Claim) -> bool:
    """Is this unit part of adding methods to a ready store (not of a build)?"""
    if claim.kind == UnitKind.EXTEND:
        return True
    if claim.kind not in PLAN_UNITS:
        return False
    unit = session.get(WorkUnit, claim.id)
    return bool(unit is not None and (unit.payload or {}).get("extension"))


def fail_extension(session: Session, claim: Claim, error: str) -> None:
    """Adding methods failed for good: the unit and the rest of its plan are failed (its
    methods are no longer pending); the store serves what it had."""
    unit = session.get(WorkUnit, claim.id)
    if unit is None:
        return
    fail_plan(session, unit, error)


def fail_build(session: Session, datastore_id: str, error: str) -> None:
    """Failed with the reason, unless it was cancelled or removed meanwhile."""
    store = session.get(Datastore, datastore_id, with_for_update=True)
    if is_active(store):
        store.status = DatastoreStatus.FAILED
        store.error = error
