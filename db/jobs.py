"""What the API asks of the build queue: enqueue a build, add methods, verify, cancel.

Routes call these functions and never write SQL or units themselves; the units' kinds and
payloads are ``gradstore.db.units``', what workers do with them ``gradstore.worker.units``.
Every function works in the caller's session; those named ``request_*`` and
``remove_datastore`` commit.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, object_session

from gradstore.api_models import DatastoreStatus
from gradstore.db.models import Datastore, SelectionRecord, UnitState, WorkUnit
from gradstore.db.queue import queue_verification
from gradstore.db.units import (
    EXTENSION_UNITS,
    ExtendPayload,
    PlanPayload,
    UnitKind,
    new_unit,
    payload_of,
)

__all__ = [
    "count_datastores",
    "enqueue_build",
    "extending",
    "fail_integrity",
    "list_datastores",
    "next_plan",
    "pending_methods",
    "pending_methods_of",
    "record_selection",
    "remove_datastore",
    "request_methods",
    "request_verification",
]


def enqueue_build(
    session: Session,
    *,
    dataset_id: str,
    model_path: str | None,
    config: dict,
    warmup_from: list[str],
    warnings: list[str],
    request_id: str | None,
    datastores_dir: Path,
) -> Datastore:
    """A queued datastore and its first unit, committed; workers take it from there.

    The first unit is the warmup when a method of the store reads gradient features, else
    ``prepare`` (the pool and the manifest, with or without a model).
    """
    from gradstore.config import BuildConfig
    from gradstore.selection.needs import needs_warmup, store_methods

    methods = store_methods(BuildConfig.model_validate(config))
    first = UnitKind.WARMUP if needs_warmup(methods) else UnitKind.PREPARE
    store = Datastore(
        dataset_id=dataset_id,
        model_path=model_path,
        config=config,
        warmup_from=warmup_from,
        path="",
        warnings=warnings,
        request_id=request_id,
    )
    session.add(store)
    session.flush()
    store.path = str((datastores_dir / store.id).resolve())
    session.add(new_unit(store.id, first, request_id=request_id))
    session.commit()
    return store


def list_datastores(session: Session, limit: int, offset: int) -> list[Datastore]:
    return list(
        session.scalars(
            select(Datastore)
            .order_by(Datastore.created_at, Datastore.id)
            .offset(offset)
            .limit(limit)
        ).all()
    )


def count_datastores(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(Datastore)) or 0)


def pending_methods(session: Session, datastore_id: str) -> list[str]:
    """Methods of extensions not yet done (nor failed) on this store: their extend unit, or
    the artifact and finish units it planned."""
    units = session.execute(
        select(WorkUnit.kind, WorkUnit.payload).where(
            WorkUnit.datastore_id == datastore_id,
            WorkUnit.kind.in_(EXTENSION_UNITS),
            WorkUnit.state.in_((UnitState.PENDING, UnitState.RUNNING)),
        )
    ).all()
    methods: set[str] = set()
    for kind, raw in units:
        if kind == UnitKind.EXTEND:
            methods.update(payload_of(kind, raw, ExtendPayload).methods)
        else:
            methods.update(payload_of(kind, raw, PlanPayload).methods)
    return sorted(methods)


def pending_methods_of(store: Datastore) -> list[str]:
    """``pending_methods`` of a row in its own session (none when the row is detached)."""
    session = object_session(store)
    return [] if session is None else pending_methods(session, store.id)


def next_plan(session: Session, datastore_id: str) -> int:
    """A ``plan`` number no unit of the store has used yet (a build's units have 0)."""
    used = session.scalar(
        select(func.max(WorkUnit.plan)).where(WorkUnit.datastore_id == datastore_id)
    )
    return 1 if used is None else int(used) + 1


def request_methods(
    session: Session, store: Datastore, methods: list[str], request_id: str | None
) -> None:
    """Queue one extend unit that adds ``methods`` to a ready store; committed. The request
    that asked for it is on the log lines of its units."""
    session.add(
        new_unit(
            store.id,
            UnitKind.EXTEND,
            ExtendPayload(methods=methods),
            request_id=request_id,
            plan=next_plan(session, store.id),
        )
    )
    session.commit()


def request_verification(
    session: Session, datastore_id: str, max_attempts: int, request_id: str | None
) -> None:
    """Queue a verify unit unless one waits or runs already (or another caller's insert
    wins the race); committed."""
    try:
        queue_verification(session, datastore_id, max_attempts, request_id)
        session.commit()
    except IntegrityError:  # queued by someone else at the same moment
        session.rollback()


def extending(session: Session, datastore_id: str) -> bool:
    """Is a finish unit adding artifacts to this store's manifest right now?"""
    running = session.scalar(
        select(func.count()).where(
            WorkUnit.datastore_id == datastore_id,
            WorkUnit.kind == UnitKind.FINISH,
            WorkUnit.state == UnitState.RUNNING,
        )
    )
    return bool(running)


def fail_integrity(session: Session, datastore_id: str, reason: str) -> None:
    """A ready store whose files no longer match: failed with the reason; committed."""
    session.execute(
        update(Datastore)
        .where(Datastore.id == datastore_id, Datastore.status == DatastoreStatus.READY)
        .values(status=DatastoreStatus.FAILED, error=f"integrity check failed: {reason}")
    )
    session.commit()


def remove_datastore(session: Session, store: Datastore) -> None:
    """The store's row, units and audit records, gone (a build in progress is cancelled:
    its workers see it at their next batch); committed. Its files are the caller's."""
    session.execute(delete(SelectionRecord).where(SelectionRecord.datastore_id == store.id))
    session.execute(delete(WorkUnit).where(WorkUnit.datastore_id == store.id))
    session.delete(store)
    session.commit()


def record_selection(session: Session, **fields) -> SelectionRecord:
    """An audit record of a selection, flushed (its id is known) but not committed."""
    record = SelectionRecord(**fields)
    session.add(record)
    session.flush()
    return record
