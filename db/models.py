"""Tables: datasets, datastores, their work units (leased by workers) and the query log."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from gradstore.api_models import ACTIVE_BUILD, DatastoreStatus

__all__ = ["ACTIVE_BUILD", "Dataset", "Datastore", "SelectionRecord", "UnitState", "WorkUnit"]


class UnitState(StrEnum):
    """A work unit is pending until a worker leases it, running while leased, then done.

    FAILED is for units that may fail alone: adding methods to a ready store (the store
    keeps serving what it had); a failing build unit fails its build instead.
    """

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"  # verify units (the store did not match) and extend units


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Timestamps stored in UTC and always read back timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return value.astimezone(UTC) if value is not None and value.tzinfo else value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    pass


class Dataset(Base):
    __tablename__ = "datasets"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    num_examples: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Datastore(Base):
    __tablename__ = "datastores"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=DatastoreStatus.QUEUED, index=True)
    model_path: Mapped[str | None] = mapped_column(Text, nullable=True)  # None: none needed
    config: Mapped[dict] = mapped_column(JSON)
    warmup_from: Mapped[list] = mapped_column(JSON, default=list)
    path: Mapped[str] = mapped_column(Text)
    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    examples_per_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    num_examples: Mapped[int | None] = mapped_column(Integer, nullable=True)
    dim: Mapped[int | None] = mapped_column(Integer, nullable=True)
    checkpoints: Mapped[list] = mapped_column(JSON, default=list)
    skipped: Mapped[list] = mapped_column(JSON, default=list)
    methods: Mapped[list | None] = mapped_column(JSON, nullable=True)  # served once ready
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # what the submission checks found worth telling (e.g. a warmup too short to matter)
    warnings: Mapped[list] = mapped_column(JSON, default=list)
    # the request that created the build: its id is on every log line of the build
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # when every file's sha256 last matched the manifest, and the stat fingerprint
    # (inode, size, mtime, ctime of every file) the files had then; see db/integrity.py
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    verified_fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class WorkUnit(Base):
    """One leasable piece of work on a store (its kinds: ``gradstore.db.units``).

    ``(kind, plan, artifact, checkpoint, start)`` place it, uniquely per store: ``checkpoint``
    is a warmup checkpoint (featurize shards), ``plan`` numbers artifact plans and requests
    to add methods, ``artifact`` names an artifact unit's artifact.
    """

    __tablename__ = "work_units"
    __table_args__ = (
        UniqueConstraint(
            "datastore_id", "kind", "plan", "artifact", "checkpoint", "start", name="uq_work_unit"
        ),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    datastore_id: Mapped[str] = mapped_column(
        ForeignKey("datastores.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(16))  # a UnitKind
    checkpoint: Mapped[int] = mapped_column(Integer, default=0)
    plan: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    artifact: Mapped[str] = mapped_column(String(64), default="", server_default="")
    start: Mapped[int] = mapped_column(Integer, default=0)
    end: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16), default=UnitState.PENDING, index=True)
    lease_owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    payload: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # its kind's model
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WorkerRecord(Base):
    """A worker process as it last reported itself: heartbeat and monotonic counters.

    Workers run in other processes and on other machines; the API exports these rows at
    scrape time, so one /metrics shows every worker's heartbeat and throughput.
    """

    __tablename__ = "workers"
    id: Mapped[str] = mapped_column(String(200), primary_key=True)  # host:pid:token
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="idle")  # idle, busy, stopped
    current_unit_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    units_completed: Mapped[int] = mapped_column(Integer, default=0)
    units_failed: Mapped[int] = mapped_column(Integer, default=0)
    examples_featurized: Mapped[int] = mapped_column(BigInteger, default=0)
    busy_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class SelectionRecord(Base):
    """The audit log of queries."""

    __tablename__ = "selections"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    datastore_id: Mapped[str] = mapped_column(
        ForeignKey("datastores.id", ondelete="CASCADE"), index=True
    )
    method: Mapped[str] = mapped_column(String(64))
    num_targets: Mapped[int] = mapped_column(Integer)
    num_selected: Mapped[int] = mapped_column(Integer)
    request: Mapped[dict] = mapped_column(JSON)
    timings_ms: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
