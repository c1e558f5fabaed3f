"""Prometheus metrics: the API's own (in process) and the builds' and workers' (from the database).

Workers are separate processes, often on other machines, so they report to the one place
every process shares: the database (``workers`` rows with monotonic counters and a
heartbeat, the work queue, build progress). Each scrape of the API reads it there and
exports it beside the API's own counters. When the database is down the scrape still
answers, with the API's counters and ``gradstore_database_up 0``, so the 503s of an
outage are visible while it lasts.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from gradstore.api_models import ACTIVE_BUILD, DatastoreStatus
from gradstore.db.models import Datastore, UnitState, WorkerRecord, WorkUnit, utcnow

log = logging.getLogger("gradstore.metrics")

REQUESTS = Counter(
    "gradstore_http_requests_total",
    "HTTP responses by method, route template and status, unhandled errors (500) included",
    ["method", "route", "status"],
)
REQUEST_SECONDS = Histogram(
    "gradstore_http_request_duration_seconds",
    "HTTP request latency by method and route template",
    ["method", "route"],
)
_SELECT_BUCKETS = (0.005, 0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100)
SELECT_SECONDS = Histogram(
    "gradstore_select_duration_seconds",
    "Selection latency (load, target gradients, search) by method",
    ["method"],
    buckets=_SELECT_BUCKETS,
)
SELECT_PHASE_SECONDS = Histogram(
    "gradstore_select_phase_duration_seconds",
    "Selection latency by method and phase (tokenize, target_gradients, search, ...)",
    ["method", "phase"],
    buckets=_SELECT_BUCKETS,
)
INTEGRITY_FAILURES = Counter(
    "gradstore_datastore_integrity_failures_total",
    "Ready datastores refused (and marked failed) because a file changed after verification",
)


def observe_phases(method: str, timings_ms: dict[str, float]) -> None:
    for phase, milliseconds in timings_ms.items():
        if phase != "total":
            SELECT_PHASE_SECONDS.labels(method, phase).observe(milliseconds / 1000)


class DatabaseCollector(Collector):
    """Builds, the queue and the workers, as the database has them at scrape time."""

    def __init__(self, factory: sessionmaker[Session], lost_after_seconds: float):
        self.factory = factory
        self.lost_after = timedelta(seconds=lost_after_seconds)

    def collect(self):
        up = GaugeMetricFamily("gradstore_database_up", "1 when the database answered the scrape")
        try:
            with self.factory() as session:
                families = list(self._families(session))
        except Exception as exc:
            log.warning("metrics: database unavailable (%s)", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self, session: Session):
        stores = GaugeMetricFamily(
            "gradstore_datastores", "Datastores by status", labels=["status"]
        )
        for status, count in session.execute(
            select(Datastore.status, func.count()).group_by(Datastore.status)
        ):
            stores.add_metric([status], count)
        yield stores

        queue = GaugeMetricFamily(
            "gradstore_work_units",
            "Work units of active builds and verifications by kind and state (queue depth: "
            "state=pending)",
            labels=["kind", "state"],
        )
        for kind, state, count in session.execute(
            select(WorkUnit.kind, WorkUnit.state, func.count())
            .join(Datastore, Datastore.id == WorkUnit.datastore_id)
            .where(WorkUnit.state.in_((UnitState.PENDING, UnitState.RUNNING)))
            .where(
                Datastore.status.in_((*ACTIVE_BUILD, DatastoreStatus.READY, DatastoreStatus.FAILED))
            )
            .group_by(WorkUnit.kind, WorkUnit.state)
        ):
            queue.add_metric([kind, state], count)
        yield queue

        done = GaugeMetricFamily(
            "gradstore_build_examples_done", "Featurized rows of a build", labels=["datastore_id"]
        )
        total = GaugeMetricFamily(
            "gradstore_build_examples", "Rows a build featurizes", labels=["datastore_id"]
        )
        for store in session.scalars(select(Datastore).where(Datastore.status.in_(ACTIVE_BUILD))):
            done.add_metric([store.id], store.progress_done)
            total.add_metric([store.id], store.progress_total)
        yield done
        yield total
        yield from self._workers(session)

    def _workers(self, session: Session):
        now = utcnow()
        heartbeat = GaugeMetricFamily(
            "gradstore_worker_last_heartbeat_timestamp_seconds",
            "Unix time of each worker's last heartbeat",
            labels=["worker"],
        )
        states = GaugeMetricFamily(
            "gradstore_workers",
            "Workers by state (lost: no heartbeat within the lease time)",
            labels=["state"],
        )
        counters = {
            "units_completed": CounterMetricFamily(
                "gradstore_worker_units_completed", "Units a worker finished", labels=["worker"]
            ),
            "units_failed": CounterMetricFamily(
                "gradstore_worker_units_failed", "Units that failed on a worker", labels=["worker"]
            ),
            "examples_featurized": CounterMetricFamily(
                "gradstore_worker_examples_featurized",
                "Pool rows a worker featurized (build throughput: rate() of it)",
                labels=["worker"],
            ),
            "busy_seconds": CounterMetricFamily(
                "gradstore_worker_busy_seconds",
                "Seconds a worker spent running units",
                labels=["worker"],
            ),
        }
        by_state = {"busy": 0, "idle": 0, "stopped": 0, "lost": 0}
        for worker in session.scalars(select(WorkerRecord)):
            heartbeat.add_metric([worker.id], worker.last_heartbeat_at.timestamp())
            state = worker.state
            if state != "stopped" and now - worker.last_heartbeat_at > self.lost_after:
                state = "lost"
            by_state[state] = by_state.get(state, 0) + 1
            for field, family in counters.items():
                family.add_metric([worker.id], float(getattr(worker, field)))
        for state, count in by_state.items():
            states.add_metric([state], count)
        yield heartbeat
        yield states
        yield from counters.values()


def exposition(factory: sessionmaker[Session], lost_after_seconds: float) -> bytes:
    """The API's registry, then the database's families (one scrape, one text)."""
    from prometheus_client import REGISTRY

    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(DatabaseCollector(factory, lost_after_seconds))
    return generate_latest(REGISTRY) + generate_latest(scrape)
