"""The kinds of work unit, what each one's payload holds, and which stores it works on.

The data half of the build's state machine, declared once here because the queue (claims),
the jobs (enqueueing) and the workers all read it; what each kind does when it runs and
when it is done is the other half, in ``gradstore.worker.units``. A unit row is placed by
``(datastore_id, kind, plan, artifact, checkpoint, start)``, unique: ``checkpoint`` is a
warmup checkpoint (featurize shards), ``plan`` numbers the artifact plans and the requests
to add methods, ``artifact`` names the artifact an artifact unit computes rows of. Its
``payload`` is validated through the kind's pydantic model on the way in and out: no code
reads a payload as a bare dict.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field

from gradstore.api_models import ACTIVE_BUILD, DatastoreStatus
from gradstore.db.models import Datastore, WorkUnit


class UnitKind(StrEnum):
    """The work units of a build, in stage order; featurize and artifact units are shards.

    ``verify`` is no build stage: a full check of a ready (or integrity-failed) store
    against its manifest, queued on demand and on a schedule. ``extend`` starts adding
    methods to a ready store: its artifact units and their finish unit follow it.
    """

    PREPARE = "prepare"  # a build without gradient features: the pool, then the manifest
    WARMUP = "warmup"
    FEATURIZE = "featurize"
    INDEX = "index"
    ARTIFACT = "artifact"  # rows [start, end) of one extra artifact (its name: ``artifact``)
    FINISH = "finish"  # adds a plan's finished artifacts to the manifest, then verifies
    VERIFY = "verify"
    EXTEND = "extend"  # artifacts for more methods, added to a ready store


class NoPayload(BaseModel):
    """Units placed by their row alone (prepare, warmup, featurize, index, verify)."""

    model_config = ConfigDict(extra="forbid")


class ExtendPayload(BaseModel):
    """One request to add methods to a ready store."""

    model_config = ConfigDict(extra="forbid")
    methods: list[str] = Field(min_length=1)


class PlanPayload(BaseModel):
    """A plan of artifact units (a build's, or one extension's) and its finish unit: every
    unit of the plan carries it, so a failure finds the whole plan and an extension's
    methods stay pending until its finish unit is done."""

    model_config = ConfigDict(extra="forbid")
    artifacts: list[str] = Field(min_length=1)
    methods: list[str] = Field(default_factory=list)  # an extension's methods
    extension: bool = False


PAYLOADS: dict[UnitKind, type[BaseModel]] = {
    UnitKind.PREPARE: NoPayload,
    UnitKind.WARMUP: NoPayload,
    UnitKind.FEATURIZE: NoPayload,
    UnitKind.INDEX: NoPayload,
    UnitKind.ARTIFACT: PlanPayload,
    UnitKind.FINISH: PlanPayload,
    UnitKind.VERIFY: NoPayload,
    UnitKind.EXTEND: ExtendPayload,
}

# stores a verify unit may run on: a failed one only if it was verified once (its failure
# was an integrity check, and restored files can make it ready again)
VERIFIABLE = (DatastoreStatus.READY, DatastoreStatus.FAILED)


@dataclass(frozen=True)
class WorksOn:
    """The store states a kind of unit is claimed and kept in; a cancel stops it or not."""

    statuses: tuple[DatastoreStatus, ...]
    stopped_by_cancel: bool = True


_BUILD = WorksOn(ACTIVE_BUILD)
WORKS_ON: dict[UnitKind, WorksOn] = {
    UnitKind.PREPARE: _BUILD,
    UnitKind.WARMUP: _BUILD,
    UnitKind.FEATURIZE: _BUILD,
    UnitKind.INDEX: _BUILD,
    # a build's plan (its store is active) or an extension's (the store is ready)
    UnitKind.ARTIFACT: WorksOn((*ACTIVE_BUILD, DatastoreStatus.READY)),
    UnitKind.FINISH: WorksOn((*ACTIVE_BUILD, DatastoreStatus.READY)),
    UnitKind.VERIFY: WorksOn(VERIFIABLE, stopped_by_cancel=False),
    UnitKind.EXTEND: WorksOn((DatastoreStatus.READY,)),
}
# units of an artifact plan
PLAN_UNITS = (UnitKind.ARTIFACT, UnitKind.FINISH)
# units that add methods to a ready store: failing for good fails them, not the store
EXTENSION_UNITS = (UnitKind.EXTEND, *PLAN_UNITS)
# units whose failure does not fail a build: they work on a ready store (or check it)
OUTSIDE_BUILD = (UnitKind.VERIFY, UnitKind.EXTEND)

P = TypeVar("P", bound=BaseModel)


def still_wanted(store: Datastore | None, kind: str) -> bool:
    """The unit's store is still there, in a state this kind of unit works on."""
    rule = WORKS_ON[UnitKind(kind)]
    return (
        store is not None
        and store.status in rule.statuses
        and not (rule.stopped_by_cancel and store.cancel_requested)
    )


def payload_of(kind: str, raw: dict | None, model: type[P]) -> P:
    """A unit's payload, validated through its kind's model (which must be ``model``)."""
    declared = PAYLOADS[UnitKind(kind)]
    if declared is not model:
        raise TypeError(f"a {kind} unit's payload is a {declared.__name__}, not {model.__name__}")
    return model.model_validate(raw or {})


def new_unit(
    datastore_id: str,
    kind: UnitKind,
    payload: BaseModel | None = None,
    request_id: str | None = None,
    **place: int | str,
) -> WorkUnit:
    """A pending unit row; its payload must be of the kind's model (none: ``NoPayload``)."""
    model = PAYLOADS[kind]
    payload = payload if payload is not None else model()
    if type(payload) is not model:
        raise TypeError(f"a {kind} unit takes a {model.__name__}, not {type(payload).__name__}")
    raw = payload.model_dump(mode="json")
    return WorkUnit(
        datastore_id=datastore_id,
        kind=kind,
        request_id=request_id,
        payload=raw or None,
        **place,
    )
