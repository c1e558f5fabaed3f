"""Prometheus metrics of the API, and build progress read from the database at scrape time.

Workers are separate processes (often machines), so build progress is not counted here:
each scrape reads it from the database, the one place every worker reports to.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gradstore.api_models import ACTIVE_BUILD
from gradstore.db.models import Datastore, WorkUnit

REQUESTS = Counter("gradstore_http_requests_total", "HTTP requests", ["method", "route", "status"])
REQUEST_SECONDS = Histogram("gradstore_http_request_seconds", "HTTP latency", ["route"])
SELECT_SECONDS = Histogram(
    "gradstore_select_seconds",
    "Selection latency (target gradients + search)",
    ["method"],
    buckets=(0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100),
)
DATASTORES = Gauge("gradstore_datastores", "Datastores by status", ["status"])
WORK_UNITS = Gauge("gradstore_work_units", "Work units of active builds by state", ["state"])
BUILD_DONE = Gauge("gradstore_build_examples_done", "Featurized rows", ["datastore_id", "stage"])
BUILD_TOTAL = Gauge("gradstore_build_examples_total", "Rows to featurize", ["datastore_id"])
BUILD_RATE = Gauge("gradstore_build_examples_per_second", "Build throughput", ["datastore_id"])


def refresh_build_gauges(session: Session) -> None:
    """Set the gauges from the database; finished builds drop out of the per-build ones."""
    for gauge in (DATASTORES, WORK_UNITS, BUILD_DONE, BUILD_TOTAL, BUILD_RATE):
        gauge.clear()
    statuses = session.execute(select(Datastore.status, func.count()).group_by(Datastore.status))
    for status, count in statuses:
        DATASTORES.labels(status).set(count)
    units = session.execute(
        select(WorkUnit.state, func.count())
        .join(Datastore, Datastore.id == WorkUnit.datastore_id)
        .where(Datastore.status.in_(ACTIVE_BUILD))
        .group_by(WorkUnit.state)
    )
    for state, count in units:
        WORK_UNITS.labels(state).set(count)
    for store in session.scalars(select(Datastore).where(Datastore.status.in_(ACTIVE_BUILD))):
        BUILD_DONE.labels(store.id, store.status).set(store.progress_done)
        BUILD_TOTAL.labels(store.id).set(store.progress_total)
        BUILD_RATE.labels(store.id).set(store.examples_per_s or 0.0)
