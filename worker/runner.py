"""The worker loop: claim a unit, keep its lease alive while running it, record the outcome.

A heartbeat thread renews the lease every ``heartbeat_seconds``; when the renewal fails
(the lease expired and someone else took the unit, or the build was cancelled) the running
unit is told to stop at its next batch. A worker killed outright simply stops renewing: its
lease expires and another worker claims the unit again.

Every log line of a unit carries the worker, the datastore, the unit and the id of the
request that asked for the work, so an operator can follow a request from the API into the
workers. The worker reports itself in the ``workers`` table (heartbeat, counters) for the
API's /metrics. An unreachable database pauses the loop (one error line, then one when it
is back), it never ends it.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import delete, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from gradstore.db.engine import make_engine, make_sessionmaker, transaction
from gradstore.db.logs import log_context
from gradstore.db.models import Datastore, WorkerRecord, utcnow
from gradstore.db.queue import (
    Claim,
    claim_next,
    fail_exhausted,
    release_for_retry,
    renew,
    schedule_verifications,
)
from gradstore.db.settings import Settings
from gradstore.db.units import UnitKind
from gradstore.errors import ManifestMismatchError
from gradstore.files import remove_tree
from gradstore.worker.stages import (
    BuildGone,
    fail_build,
    fail_extension,
    fail_verification,
    finish_unit,
    is_extension,
    mark_started,
    run_unit,
    still_wanted,
)

log = logging.getLogger("gradstore.worker")
DATABASE_DOWN = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,
)
STALE_WORKER_ROWS = 24 * 3600  # rows of workers silent this long are dropped
MAX_BACKOFF_SECONDS = 30.0


class UnitAborted(Exception):
    """The lease was lost or the build cancelled: stop without recording anything."""


class Heartbeat:
    """Renews one lease in the background; ``check`` raises once it is lost."""

    def __init__(
        self,
        factory,
        claim: Claim,
        owner: str,
        settings: Settings,
        on_beat: Callable[[], None] | None = None,
    ):
        self.factory, self.claim, self.owner, self.settings = factory, claim, owner, settings
        self.on_beat = on_beat
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._context = {"datastore_id": claim.datastore_id, "unit_id": claim.id}

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with log_context(worker=self.owner, request_id=self.claim.request_id, **self._context):
            while not self._stop.wait(self.settings.heartbeat_seconds):
                try:
                    alive = renew(self.factory, self.claim, self.owner, self.settings.lease_seconds)
                    if self.on_beat is not None:
                        self.on_beat()
                except Exception as exc:  # a database hiccup: try again at the next beat
                    log.warning("lease renewal failed (%s); trying again", type(exc).__name__)
                    continue
                if not alive:
                    self.lost.set()
                    return

    def check(self, _rows: int = 0) -> None:
        if self.lost.is_set():
            raise UnitAborted(f"lost the lease on unit {self.claim.id} (or it was cancelled)")


class Worker:
    """One claimer; run many (processes or machines) against the same database."""

    def __init__(
        self,
        settings: Settings,
        factory: sessionmaker[Session] | None = None,
        parent_pid: int | None = None,
    ):
        self.settings = settings
        self.factory = factory or make_sessionmaker(
            make_engine(settings.database_url, settings.database_connect_timeout)
        )
        self.hostname = socket.gethostname()
        self.owner = f"{self.hostname}:{os.getpid()}:{os.urandom(4).hex()}"
        self.parent_pid = parent_pid
        self.show_progress = sys.stderr.isatty()
        self._registered = False
        self._last_beat = 0.0
        self._last_schedule = 0.0

    def orphaned(self) -> bool:
        """True when the embedded server that started us is gone (killed without cleanup)."""
        return self.parent_pid is not None and os.getppid() != self.parent_pid

    # the workers table: heartbeat and counters for /metrics

    def _register(self) -> None:
        if self._registered:
            return
        stale = utcnow() - timedelta(seconds=STALE_WORKER_ROWS)
        with transaction(self.factory) as session:
            session.execute(delete(WorkerRecord).where(WorkerRecord.last_heartbeat_at < stale))
            session.add(WorkerRecord(id=self.owner, hostname=self.hostname, pid=os.getpid()))
        self._registered = True
        log.info("worker registered", extra={"worker": self.owner})

    def beat(self, busy_unit: int | None = None, **counters: float) -> None:
        """Heartbeat (and add to the counters); the state says busy or idle."""
        values = {
            "last_heartbeat_at": utcnow(),
            "state": "busy" if busy_unit is not None else "idle",
            "current_unit_id": busy_unit,
        }
        for name, amount in counters.items():
            values[name] = getattr(WorkerRecord, name) + amount
        with transaction(self.factory) as session:
            session.execute(
                update(WorkerRecord).where(WorkerRecord.id == self.owner).values(values)
            )
        self._last_beat = time.monotonic()

    def _idle_beat(self) -> None:
        if time.monotonic() - self._last_beat >= self.settings.heartbeat_seconds:
            self.beat()

    def stopped(self) -> None:
        try:
            with transaction(self.factory) as session:
                session.execute(
                    update(WorkerRecord)
                    .where(WorkerRecord.id == self.owner)
                    .values(state="stopped", current_unit_id=None, last_heartbeat_at=utcnow())
                )
        except Exception as exc:
            log.warning("could not record this worker as stopped (%s)", type(exc).__name__)

    # units

    def run_one(self) -> bool:
        """Claim and run one unit; False when there was nothing to do."""
        settings = self.settings
        self._register()
        for store_id in fail_exhausted(self.factory, settings.max_attempts):
            log.error("a unit used up its attempts: build failed", extra={"datastore_id": store_id})
        claim = claim_next(self.factory, self.owner, settings.lease_seconds, settings.max_attempts)
        if claim is None:
            self._idle_beat()
            return self._schedule_verifications()  # new work, if any was due
        context = {
            "datastore_id": claim.datastore_id,
            "unit_id": claim.id,
            "unit_kind": claim.kind,
            "request_id": claim.request_id,
        }
        with log_context(**context):
            self._run_claimed(claim)
        return True

    def _run_claimed(self, claim: Claim) -> None:
        log.info("claimed %s unit (attempt %d)", claim.kind, claim.attempts)
        with transaction(self.factory) as session:
            mark_started(session, claim)
        self.beat(busy_unit=claim.id)
        started = time.perf_counter()
        try:
            on_beat = lambda: self.beat(busy_unit=claim.id)  # noqa: E731
            with Heartbeat(self.factory, claim, self.owner, self.settings, on_beat) as beat:
                fingerprint = self._run_unit(claim, beat)
                beat.check()
            seconds = time.perf_counter() - started
            with transaction(self.factory) as session:
                active = finish_unit(session, claim, self.owner, seconds, fingerprint)
            rows = claim.end - claim.start if claim.kind == UnitKind.FEATURIZE else 0
            self.beat(units_completed=1, examples_featurized=rows, busy_seconds=seconds)
            log.info("finished %s unit in %.2f s", claim.kind, seconds, extra={"rows": rows})
            if not active:
                self._clean_if_cancelled(claim)
        except (UnitAborted, BuildGone) as stopped:
            log.info("stopped %s unit: %s", claim.kind, stopped)
            self._clean_if_cancelled(claim)
            self.beat(busy_seconds=time.perf_counter() - started)
        except Exception as exc:  # the unit failed: retry it, or fail the build
            if self._build_gone(claim):  # e.g. DELETE removed its files under it
                log.info("stopped %s unit: its datastore is no longer active", claim.kind)
                self._clean_if_cancelled(claim)
            elif claim.kind == UnitKind.VERIFY and isinstance(exc, ManifestMismatchError):
                self._verification_failed(claim, exc)
            else:
                self._after_failure(claim, exc)
            self.beat(units_failed=1, busy_seconds=time.perf_counter() - started)

    def _build_gone(self, claim: Claim) -> bool:
        with self.factory() as session:
            return not still_wanted(session.get(Datastore, claim.datastore_id), claim)

    def _run_unit(self, claim: Claim, beat: Heartbeat) -> str | None:
        sharded = claim.kind in (UnitKind.FEATURIZE, UnitKind.ARTIFACT)
        total = claim.end - claim.start if sharded else None
        label = f"{claim.kind} {claim.datastore_id[:8]}"
        if claim.kind == UnitKind.FEATURIZE:
            label += f" ckpt {claim.checkpoint} [{claim.start}:{claim.end})"
        elif sharded:
            label += f" [{claim.start}:{claim.end})"
        with tqdm(total=total, desc=label, unit="ex", disable=not self.show_progress) as bar:

            def on_batch(rows: int) -> None:
                beat.check()
                bar.update(rows)

            return run_unit(
                self.factory,
                claim,
                self.settings.device,
                on_batch,
                self.show_progress,
                self.settings.roots,
            )

    def _clean_if_cancelled(self, claim: Claim) -> None:
        """A cancelled or deleted build keeps no artifacts, even ones written just now."""
        with self.factory() as session:
            store = session.get(Datastore, claim.datastore_id)
            if store is None:
                remove_tree(self.settings.datastores_dir / claim.datastore_id)
            elif store.cancel_requested:
                remove_tree(store.path)

    def _verification_failed(self, claim: Claim, exc: ManifestMismatchError) -> None:
        log.error("datastore failed its verification: %s", exc.detail)
        with transaction(self.factory) as session:
            fail_verification(session, claim, self.owner, exc.detail)

    def _after_failure(self, claim: Claim, exc: Exception) -> None:
        detail = f"{claim.kind} unit failed: {type(exc).__name__}: {exc}"
        log.error("%s", detail, exc_info=exc)
        with transaction(self.factory) as session:
            release_for_retry(session, claim, self.owner, detail)  # first: takes SQLite's lock
            if claim.attempts >= self.settings.max_attempts:
                if is_extension(session, claim):
                    fail_extension(session, claim, detail)
                elif claim.kind != UnitKind.VERIFY:
                    fail_build(session, claim.datastore_id, detail)

    def _schedule_verifications(self) -> bool:
        """When idle, at most every 30 s: queue the periodic re-verification of stores."""
        if self._last_schedule and time.monotonic() - self._last_schedule < 30:
            return False
        self._last_schedule = time.monotonic()
        queued = schedule_verifications(
            self.factory, self.settings.verify_interval_seconds, self.settings.max_attempts
        )
        for store_id in queued:
            log.info("verification queued", extra={"datastore_id": store_id})
        return bool(queued)

    def _backoff(self, failures: int) -> float:
        return min(MAX_BACKOFF_SECONDS, max(1.0, 5 * self.settings.poll_seconds) * failures)

    def run(self, once: bool = False, stop: threading.Event | None = None) -> None:
        """Work until stopped (or, with ``once``, until nothing is left to claim).

        A database that is unreachable does not end the loop: the worker logs it once,
        waits (longer each time, up to 30 s) and tries again; its lease, if it held one,
        simply runs out meanwhile. It logs again when the database is back.
        """
        stop = stop or threading.Event()
        failures = 0
        with log_context(worker=self.owner):
            log.info("worker %s started", self.owner)  # deploy/test-compose looks for it
            while not stop.is_set() and not self.orphaned():
                try:
                    worked = self.run_one()
                except DATABASE_DOWN as exc:
                    failures += 1
                    if failures == 1:
                        log.error(
                            "database unreachable (%s: %s); retrying, at most %.0f s apart",
                            type(exc).__name__,
                            _first_line(exc),
                            MAX_BACKOFF_SECONDS,
                        )
                    stop.wait(self._backoff(failures))
                    continue
                except Exception:
                    failures += 1
                    log.exception("worker loop error; trying again")
                    stop.wait(self._backoff(failures))
                    continue
                if failures:
                    log.info("database reachable again after %d failed attempts", failures)
                    failures = 0
                if not worked:
                    if once:
                        break
                    stop.wait(self.settings.poll_seconds)
            if self._registered:
                self.stopped()
            log.info("worker stopped")


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
