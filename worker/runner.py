"""The worker loop: claim a unit, keep its lease alive while running it, record the outcome.

A heartbeat thread renews the lease every ``heartbeat_seconds``; when the renewal fails
(the lease expired and someone else took the unit, or the build was cancelled) the running
unit is told to stop at its next batch. A worker killed outright simply stops renewing: its
lease expires and another worker claims the unit again.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
import traceback
import uuid

from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from gradstore.api_models import UnitKind
from gradstore.db.engine import make_engine, make_sessionmaker, transaction
from gradstore.db.models import Datastore
from gradstore.db.queue import Claim, claim_next, fail_exhausted, release_for_retry, renew
from gradstore.db.settings import Settings
from gradstore.files import remove_tree
from gradstore.worker.stages import (
    BuildGone,
    fail_build,
    fail_extension,
    finish_unit,
    is_live,
    mark_started,
    run_unit,
)

log = logging.getLogger("gradstore.worker")


class UnitAborted(Exception):
    """The lease was lost or the build cancelled: stop without recording anything."""


class Heartbeat:
    """Renews one lease in the background; ``check`` raises once it is lost."""

    def __init__(self, factory, claim: Claim, owner: str, settings: Settings):
        self.factory, self.claim, self.owner, self.settings = factory, claim, owner, settings
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_seconds):
            try:
                alive = renew(self.factory, self.claim, self.owner, self.settings.lease_seconds)
            except Exception:  # a database hiccup: try again at the next beat
                log.exception("lease renewal failed")
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
        self.factory = factory or make_sessionmaker(make_engine(settings.database_url))
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.parent_pid = parent_pid
        self.show_progress = sys.stderr.isatty()

    def orphaned(self) -> bool:
        """True when the embedded server that started us is gone (killed without cleanup)."""
        return self.parent_pid is not None and os.getppid() != self.parent_pid

    def run_one(self) -> bool:
        """Claim and run one unit; False when there was nothing to do."""
        settings = self.settings
        for store_id in fail_exhausted(self.factory, settings.max_attempts):
            log.error("datastore %s failed: a unit used up its attempts", store_id)
        claim = claim_next(self.factory, self.owner, settings.lease_seconds, settings.max_attempts)
        if claim is None:
            return False
        log.info("claimed %s unit %s of datastore %s", claim.kind, claim.id, claim.datastore_id)
        with transaction(self.factory) as session:
            mark_started(session, claim)
        started = time.perf_counter()
        try:
            with Heartbeat(self.factory, claim, self.owner, settings) as beat:
                self._run_unit(claim, beat)
                beat.check()
            with transaction(self.factory) as session:
                active = finish_unit(session, claim, self.owner, time.perf_counter() - started)
            if not active:
                self._clean_if_cancelled(claim)
        except (UnitAborted, BuildGone) as stopped:
            log.info("stopped %s unit %s: %s", claim.kind, claim.id, stopped)
            self._clean_if_cancelled(claim)
        except Exception as exc:  # the unit failed: retry it, or fail the build
            if self._build_gone(claim):  # e.g. DELETE removed its files under it
                log.info("stopped %s unit %s: its build is no longer active", claim.kind, claim.id)
                self._clean_if_cancelled(claim)
            else:
                self._after_failure(claim, exc)
        return True

    def _build_gone(self, claim: Claim) -> bool:
        with self.factory() as session:
            return not is_live(session.get(Datastore, claim.datastore_id), claim.kind)

    def _run_unit(self, claim: Claim, beat: Heartbeat) -> None:
        total = claim.end - claim.start if claim.kind == UnitKind.FEATURIZE else None
        label = f"{claim.kind} {claim.datastore_id[:8]}"
        if claim.kind == UnitKind.FEATURIZE:
            label += f" ckpt {claim.checkpoint} [{claim.start}:{claim.end})"
        with tqdm(total=total, desc=label, unit="ex", disable=not self.show_progress) as bar:

            def on_batch(rows: int) -> None:
                beat.check()
                bar.update(rows)

            run_unit(self.factory, claim, self.settings.device, on_batch, self.show_progress)

    def _clean_if_cancelled(self, claim: Claim) -> None:
        """A cancelled or deleted build keeps no artifacts, even ones written just now."""
        with self.factory() as session:
            store = session.get(Datastore, claim.datastore_id)
            if store is None:
                remove_tree(self.settings.datastores_dir / claim.datastore_id)
            elif store.cancel_requested:
                remove_tree(store.path)

    def _after_failure(self, claim: Claim, exc: Exception) -> None:
        detail = f"{claim.kind} unit failed: {type(exc).__name__}: {exc}"
        log.error("%s\n%s", detail, traceback.format_exc())
        with transaction(self.factory) as session:
            release_for_retry(session, claim, self.owner, detail)  # first: takes SQLite's lock
            if claim.attempts >= self.settings.max_attempts:
                if claim.kind == UnitKind.EXTEND:
                    fail_extension(session, claim, detail)
                else:
                    fail_build(session, claim.datastore_id, detail)

    def run(self, once: bool = False, stop: threading.Event | None = None) -> None:
        """Work until stopped (or, with ``once``, until nothing is left to claim).

        A database that is briefly unreachable does not end the loop: the worker logs it
        and tries again after a pause (its lease, if any, simply runs out meanwhile).
        """
        stop = stop or threading.Event()
        log.info("worker %s started", self.owner)
        while not stop.is_set() and not self.orphaned():
            try:
                worked = self.run_one()
            except Exception:
                log.exception("worker loop error; trying again")
                stop.wait(max(1.0, 5 * self.settings.poll_seconds))
                continue
            if not worked:
                if once:
                    return
                stop.wait(self.settings.poll_seconds)
