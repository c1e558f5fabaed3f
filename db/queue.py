"""The work queue in the database: claim with a lease, renew, complete, fail.

A claim is one ``UPDATE … WHERE id = (SELECT … LIMIT 1) RETURNING`` statement: on PostgreSQL
the inner select takes ``FOR UPDATE SKIP LOCKED`` so concurrent workers never wait on or get
the same unit; on SQLite the statement runs under the single writer lock with the latest
data. A unit is claimable when pending, or running with an expired lease (its worker died).
A unit whose lease expired ``max_attempts`` times is not retried: its worker keeps dying
(out of memory, a bad GPU), so ``fail_exhausted`` fails the build with that reason instead
of letting workers die on it forever.

Besides the units of builds, ``verify`` units re-read every byte of a ready store (or of
one failed by an integrity check, whose files may have been restored); they are claimed
after any build work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast

from sqlalchemy import CursorResult, and_, delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from gradstore.api_models import ACTIVE_BUILD, DatastoreStatus
from gradstore.db.engine import transaction
from gradstore.db.models import Datastore, UnitState, WorkUnit
from gradstore.db.units import (
    EXTENSION_UNITS,
    OUTSIDE_BUILD,
    PLAN_UNITS,
    VERIFIABLE,
    WORKS_ON,
    UnitKind,
    new_unit,
)

__all__ = [
    "ACTIVE_BUILD",
    "EXTENSION_UNITS",
    "PLAN_UNITS",
    "VERIFIABLE",
    "Claim",
    "claim_next",
    "complete",
    "fail_exhausted",
    "fail_plan",
    "queue_verification",
    "release_dead_local_leases",
    "renew",
    "schedule_verifications",
    "verifications_in_progress",
]


@dataclass(frozen=True)
class Claim:
    id: int
    datastore_id: str
    kind: str
    checkpoint: int
    start: int
    end: int
    attempts: int
    request_id: str | None = None
    plan: int = 0
    artifact: str = ""
    payload: dict | None = None  # read through its kind's model (gradstore.db.units)


def claimable_store() -> ColumnElement[bool]:
    """The unit's store is in a state its kind works on (``WORKS_ON``), as one condition."""
    return or_(
        *(
            and_(
                WorkUnit.kind == kind,
                Datastore.status.in_(rule.statuses),
                *([Datastore.cancel_requested.is_(False)] if rule.stopped_by_cancel else []),
            )
            for kind, rule in WORKS_ON.items()
        )
    )


def _now() -> datetime:
    return datetime.now(UTC)


def claim_next(
    factory: sessionmaker[Session], owner: str, lease_seconds: float, max_attempts: int = 3
) -> Claim | None:
    """Lease the oldest claimable unit of an active build to ``owner``, or None."""
    now = _now()
    with transaction(factory) as session:
        claimable = (
            select(WorkUnit.id)
            .join(Datastore, Datastore.id == WorkUnit.datastore_id)
            .where(
                claimable_store(),
                or_(
                    WorkUnit.state == UnitState.PENDING,
                    and_(
                        WorkUnit.state == UnitState.RUNNING,
                        WorkUnit.lease_expires_at < now,
                        WorkUnit.attempts < max_attempts,
                    ),
                ),
            )
            .order_by(WorkUnit.kind == UnitKind.VERIFY, WorkUnit.id)  # builds first
            .limit(1)
        )
        if session.get_bind().dialect.name == "postgresql":
            claimable = claimable.with_for_update(skip_locked=True, of=WorkUnit)
        row = session.execute(
            update(WorkUnit)
            .where(WorkUnit.id == claimable.scalar_subquery())
            .values(
                state=UnitState.RUNNING,
                lease_owner=owner,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                attempts=WorkUnit.attempts + 1,
            )
            .returning(
                WorkUnit.id,
                WorkUnit.datastore_id,
                WorkUnit.kind,
                WorkUnit.checkpoint,
                WorkUnit.start,
                WorkUnit.end,
                WorkUnit.attempts,
                WorkUnit.request_id,
                WorkUnit.plan,
                WorkUnit.artifact,
                WorkUnit.payload,
            )
        ).first()
    return Claim(**row._asdict()) if row else None


def renew(factory: sessionmaker[Session], claim: Claim, owner: str, lease_seconds: float) -> bool:
    """Extend the lease; False when it was lost (expired and taken) or the build was stopped."""
    with transaction(factory) as session:
        result = cast(
            CursorResult,
            session.execute(
                update(WorkUnit)
                .where(
                    WorkUnit.id == claim.id,
                    WorkUnit.lease_owner == owner,
                    WorkUnit.state == UnitState.RUNNING,
                )
                .values(lease_expires_at=_now() + timedelta(seconds=lease_seconds)),
            ),
        )
        store = session.get(Datastore, claim.datastore_id)
        return result.rowcount == 1 and store is not None and not store.cancel_requested


def complete(session: Session, claim: Claim, owner: str, seconds: float) -> bool:
    """Mark done if we still hold the lease (another holder would write the same bytes)."""
    result = cast(
        CursorResult,
        session.execute(
            update(WorkUnit)
            .where(
                WorkUnit.id == claim.id,
                WorkUnit.lease_owner == owner,
                WorkUnit.state == UnitState.RUNNING,
            )
            .values(state=UnitState.DONE, seconds=seconds, lease_expires_at=None),
        ),
    )
    return result.rowcount == 1


def release_for_retry(session: Session, claim: Claim, owner: str, error: str) -> None:
    session.execute(
        update(WorkUnit)
        .where(WorkUnit.id == claim.id, WorkUnit.lease_owner == owner)
        .values(state=UnitState.PENDING, lease_owner=None, lease_expires_at=None, error=error)
    )


def fail_exhausted(factory: sessionmaker[Session], max_attempts: int) -> list[str]:
    """Fail the active builds whose expired unit has used up its attempts; their IDs."""
    with transaction(factory) as session:
        rows = session.execute(
            select(WorkUnit.datastore_id, WorkUnit.kind, WorkUnit.id, WorkUnit.lease_owner)
            .join(Datastore, Datastore.id == WorkUnit.datastore_id)
            .where(
                Datastore.status.in_(ACTIVE_BUILD),
                WorkUnit.kind.not_in(OUTSIDE_BUILD),
                WorkUnit.state == UnitState.RUNNING,
                WorkUnit.lease_expires_at < _now(),
                WorkUnit.attempts >= max_attempts,
            )
        ).all()
        failed: list[str] = []
        for datastore_id, kind, unit_id, owner in rows:
            if datastore_id in failed:
                continue
            session.execute(
                update(Datastore)
                .where(Datastore.id == datastore_id, Datastore.status.in_(ACTIVE_BUILD))
                .values(
                    status=DatastoreStatus.FAILED,
                    error=f"{kind} unit {unit_id} lost its worker {max_attempts} times "
                    f"(last {owner}); the worker dies on it (out of memory?)",
                )
            )
            failed.append(datastore_id)
        # an extension of a ready store fails alone (with the rest of its artifact plan):
        # the store keeps serving what it had
        exhausted = session.scalars(
            select(WorkUnit)
            .join(Datastore, Datastore.id == WorkUnit.datastore_id)
            .where(
                Datastore.status.not_in(ACTIVE_BUILD),
                WorkUnit.kind.in_(EXTENSION_UNITS),
                WorkUnit.state == UnitState.RUNNING,
                WorkUnit.lease_expires_at < _now(),
                WorkUnit.attempts >= max_attempts,
            )
        ).all()
        for unit in exhausted:
            fail_plan(session, unit, f"{unit.kind} unit lost its worker {max_attempts} times")
    return failed


def fail_plan(session: Session, unit: WorkUnit, error: str) -> None:
    """Fail ``unit`` and, for an artifact or finish unit, every unfinished unit of its plan."""
    units = [unit]
    if unit.kind in PLAN_UNITS:
        units += session.scalars(
            select(WorkUnit).where(
                WorkUnit.datastore_id == unit.datastore_id,
                WorkUnit.kind.in_(PLAN_UNITS),
                WorkUnit.plan == unit.plan,
                WorkUnit.state.in_((UnitState.PENDING, UnitState.RUNNING)),
                WorkUnit.id != unit.id,
            )
        ).all()
    for each in units:
        each.state = UnitState.FAILED
        each.error = error
        each.lease_owner = None
        each.lease_expires_at = None


def release_dead_local_leases(factory: sessionmaker[Session], hostname: str) -> int:
    """Free the leases of this host's workers whose process is gone; how many were freed.

    For embedded restarts: a killed ``gradstore serve`` need not wait for its old worker's
    lease to run out. Only owners named after this host (``host:pid:token``) are looked at;
    a pid that is alive (even if reused by another process) keeps its lease.
    """
    released = 0
    with transaction(factory) as session:
        rows = session.execute(
            select(WorkUnit.id, WorkUnit.lease_owner).where(WorkUnit.state == UnitState.RUNNING)
        ).all()
        for unit_id, owner in rows:
            host, _, rest = (owner or "").partition(":")
            pid = rest.partition(":")[0]
            if host == hostname and pid.isdigit() and not _alive(int(pid)):
                session.execute(
                    update(WorkUnit)
                    .where(WorkUnit.id == unit_id, WorkUnit.lease_owner == owner)
                    .values(state=UnitState.PENDING, lease_owner=None, lease_expires_at=None)
                )
                released += 1
    return released


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _unit_finished(unit: WorkUnit, max_attempts: int, now: datetime) -> bool:
    if unit.state in (UnitState.DONE, UnitState.FAILED):
        return True
    # a running unit whose lease ran out for the last time is never claimed again
    expired = unit.lease_expires_at is not None and unit.lease_expires_at < now
    return unit.state == UnitState.RUNNING and expired and unit.attempts >= max_attempts


def queue_verification(
    session: Session, datastore_id: str, max_attempts: int, request_id: str | None = None
) -> bool:
    """Add a verify unit unless one is waiting or running; True when one was added.

    The caller commits. Two callers racing add one unit: the second's insert breaks the
    unique key (``IntegrityError``).
    """
    now = _now()
    units = session.scalars(
        select(WorkUnit).where(
            WorkUnit.datastore_id == datastore_id, WorkUnit.kind == UnitKind.VERIFY
        )
    ).all()
    if not all(_unit_finished(u, max_attempts, now) for u in units):
        return False
    session.execute(
        delete(WorkUnit).where(
            WorkUnit.datastore_id == datastore_id, WorkUnit.kind == UnitKind.VERIFY
        )
    )
    session.add(new_unit(datastore_id, UnitKind.VERIFY, request_id=request_id))
    session.flush()
    return True


def verifications_in_progress(session: Session, datastore_ids: list[str]) -> set[str]:
    """Which of these stores have a verify unit waiting or running."""
    if not datastore_ids:
        return set()
    rows = session.scalars(
        select(WorkUnit.datastore_id).where(
            WorkUnit.datastore_id.in_(datastore_ids),
            WorkUnit.kind == UnitKind.VERIFY,
            WorkUnit.state.in_((UnitState.PENDING, UnitState.RUNNING)),
        )
    )
    return set(rows)


def schedule_verifications(
    factory: sessionmaker[Session], interval_seconds: float, max_attempts: int
) -> list[str]:
    """Queue a verification of every ready store never verified, or last verified more
    than ``interval_seconds`` ago (0: never again after the first); their IDs."""
    due: ColumnElement[bool] = Datastore.verified_at.is_(None)
    if interval_seconds > 0:
        due = or_(due, Datastore.verified_at < _now() - timedelta(seconds=interval_seconds))
    with factory() as session:
        candidates = session.scalars(
            select(Datastore.id).where(Datastore.status == DatastoreStatus.READY, due)
        ).all()
    queued = []
    for datastore_id in candidates:
        try:
            with transaction(factory) as session:
                if queue_verification(session, datastore_id, max_attempts):
                    queued.append(datastore_id)
        except IntegrityError:  # another worker queued it at the same moment
            continue
    return queued
