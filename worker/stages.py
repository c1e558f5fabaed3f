"""Running a claimed unit and recording its outcome, whatever its kind (``worker/units.py``).

The heavy work happens outside any database transaction; the transition after it (mark
done, add the next units, update progress) is one short transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeGuard

from sqlalchemy import update
from sqlalchemy.orm import Session
from typing_extensions import TypeIs

from gradstore.api_models import ACTIVE_BUILD, DatastoreStatus
from gradstore.config import BuildConfig
from gradstore.db.models import Dataset, Datastore, UnitState, WorkUnit
from gradstore.db.queue import VERIFIABLE, Claim, complete, fail_plan
from gradstore.db.units import EXTENSION_UNITS, PlanPayload, UnitKind, payload_of
from gradstore.worker.units import UnitRun, unit_type


class BuildGone(Exception):
    """The build was cancelled, failed or deleted while its unit waited or ran."""


def is_active(store: Datastore | None) -> TypeIs[Datastore]:
    return store is not None and store.status in ACTIVE_BUILD and not store.cancel_requested


def still_wanted(store: Datastore | None, claim: Claim) -> TypeGuard[Datastore]:
    """The unit's store is still there, in a state this kind of unit works on."""
    return unit_type(claim.kind).still_wanted(store)


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
    kind = unit_type(claim.kind)
    with session_factory() as session:
        store = session.get(Datastore, claim.datastore_id)
        if not still_wanted(store, claim):
            raise BuildGone(f"datastore {claim.datastore_id} is no longer being built")
        dataset = session.get(Dataset, store.dataset_id)
        job = UnitRun(
            claim=claim,
            root=Path(store.path),
            dataset_path=dataset.path if dataset is not None else "",
            dataset_sha256=dataset.sha256 if dataset is not None else "",
            model_path=store.model_path,
            config=BuildConfig.model_validate(store.config),
            warmup_from=list(store.warmup_from or []),
            device=device,
            on_batch=on_batch,
            progress=progress,
            model_roots=model_roots,
        )
    return kind.run(job, kind.payload_of(claim))


def mark_started(session: Session, claim: Claim) -> None:
    """queued → the first unit's stage, in one conditional statement so that it never undoes
    a cancel."""
    starts = unit_type(claim.kind).starts
    if starts is not None:
        session.execute(
            update(Datastore)
            .where(
                Datastore.id == claim.datastore_id,
                Datastore.status == DatastoreStatus.QUEUED,
                Datastore.cancel_requested.is_(False),
            )
            .values(status=starts)
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
    kind = unit_type(claim.kind)
    kind.on_done(session, store, claim, kind.payload_of(claim), fingerprint)
    return True


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


def is_extension(session: Session, claim: Claim) -> bool:
    """Is this unit part of adding methods to a ready store (not of a build)?"""
    if claim.kind == UnitKind.EXTEND:
        return True
    if claim.kind not in EXTENSION_UNITS:
        return False
    return payload_of(claim.kind, claim.payload, PlanPayload).extension


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
