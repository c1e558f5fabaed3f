"""What each kind of unit does, and how finishing it moves its build to the next stage.

The heavy work (gradstore.build) happens outside any database transaction; the transition
after it (mark done, add the next units, update progress) is one short transaction. The
index unit ends with a full verification of the store (db/integrity.py): a store is
ready only once every byte matched its manifest, and its fingerprint is recorded then.
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
from gradstore.config import BuildConfig
from gradstore.db import integrity
from gradstore.db.model_roots import resolve_directory
from gradstore.db.models import Dataset, Datastore, UnitState, WorkUnit, utcnow
from gradstore.db.queue import VERIFIABLE, Claim, complete
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

    Returns the store's fingerprint after a verification (index and verify units).
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
        _add_method_artifacts(root, store_methods(config), device)
        return integrity.verify(root)
    elif claim.kind == UnitKind.VERIFY:
        return integrity.verify(root)
    elif claim.kind == UnitKind.EXTEND:
        # the files the store has are checked first, the new ones are checksummed as they are
        # written; only the stat fingerprint of the result is taken after the manifest grew
        integrity.verify(root)
        _add_method_artifacts(root, payload.get("methods", []), device)
        return integrity.fingerprint(GradstoreDatastore(root, read_manifest(root)))
    else:
        raise ValueError(f"unknown unit kind {claim.kind!r}")
    return None


def _add_method_artifacts(root: Path, methods: list[str], device: str | None) -> None:
    """Compute and finish the artifacts ``methods`` need beyond the gradient features.

    One worker does all of an index or extend unit's artifacts (resumable: units already
    written are kept, so a unit that lost its worker continues where it stopped).
    """
    from gradstore.artifacts import add_artifacts
    from gradstore.selection import extra_artifacts

    names = extra_artifacts(methods)
    if names:
        add_artifacts(root, names, device=device)


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
    if claim.kind == UnitKind.WARMUP:
        _plan_featurize(session, store, root)
    elif claim.kind == UnitKind.FEATURIZE:
        _featurize_progress(session, store)
    elif claim.kind == UnitKind.INDEX:
        manifest = GradstoreDatastore.open(root, verify=False).manifest
        store.status = DatastoreStatus.READY
        store.methods = store_methods(BuildConfig.model_validate(store.config))
        store.dim = manifest.dim
        store.num_examples = manifest.num_examples
        store.checkpoints = [
            {"index": c.index, "learning_rate": c.learning_rate, "weight": c.weight}
            for c in manifest.checkpoints
        ]
        _verified(store, fingerprint)
    elif claim.kind == UnitKind.EXTEND:
        unit = session.get(WorkUnit, claim.id)
        added = (unit.payload or {}).get("methods", []) if unit is not None else []
        store.methods = sorted(set(store.methods or []) | set(added))
        _verified(store, fingerprint)
    return True


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


def _featurize_progress(session: Session, store: Datastore) -> None:
    """Rows done, and the rate of all workers together: rows over wall time since planning."""
    shard_units = (WorkUnit.datastore_id == store.id, WorkUnit.kind == UnitKind.FEATURIZE)
    done_rows = session.scalar(
        select(func.sum(WorkUnit.end - WorkUnit.start)).where(
            *shard_units, WorkUnit.state == UnitState.DONE
        )
    )
    planned_at = session.scalar(select(func.min(WorkUnit.created_at)).where(*shard_units))
    store.progress_done = int(done_rows or 0)
    elapsed = (utcnow() - planned_at).total_seconds() if planned_at else 0.0
    if elapsed > 0:
        store.examples_per_s = round(store.progress_done / elapsed, 2)
    remaining = session.scalar(
        select(func.count()).where(*shard_units, WorkUnit.state != UnitState.DONE)
    )
    if remaining == 0:
        _add_index_unit(session, store)


def _add_index_unit(session: Session, store: Datastore) -> None:
    try:
        with session.begin_nested():
            session.add(
                WorkUnit(datastore_id=store.id, kind=UnitKind.INDEX, request_id=store.request_id)
            )
    except IntegrityError:  # another worker finished the last shard at the same moment
        return
    store.status = DatastoreStatus.INDEX


def fail_extension(session: Session, claim: Claim, error: str) -> None:
    """Adding methods failed for good: the unit is failed, the store serves what it had."""
    unit = session.get(WorkUnit, claim.id)
    if unit is not None:
        unit.state = UnitState.FAILED
        unit.error = error
        unit.lease_owner = None
        unit.lease_expires_at = None


def fail_build(session: Session, datastore_id: str, error: str) -> None:
    """Failed with the reason, unless it was cancelled or removed meanwhile."""
    store = session.get(Datastore, datastore_id, with_for_update=True)
    if is_active(store):
        store.status = DatastoreStatus.FAILED
        store.error = error
