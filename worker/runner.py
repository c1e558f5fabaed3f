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

from service.db import make_engine, make_sessionmaker, transaction
from service.models import Datastore
from service.settings import Settings
from worker.queue import Claim, claim_next, release_for_retry, renew
from worker.stages import fail_build, finish_unit, mark_started, remove_artifacts, run_unit

log = logging.getLogger("gradstore.worker")


class UnitAborted(Exception):
    """The lease was lost or the build cancelled: stop without recording anything."""


class Heartbeat:
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
            raise UnitAborted(f"lost the lease on unit {self.claim.id}")


class Worker:
    def __init__(self, settings: Settings, factory: sessionmaker[Session] | None = None):
        self.settings = settings
        self.factory = factory or make_sessionmaker(make_engine(settings.database_url))
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def run_one(self) -> bool:
        """Claim and run one unit; False when there was nothing to do."""
        claim = claim_next(self.factory, self.owner, self.settings.lease_seconds)
        if claim is None:
            return False
        log.info("claimed %s unit %s of datastore %s", claim.kind, claim.id, claim.datastore_id)
        with transaction(self.factory) as session:
            mark_started(session, claim)
        started = time.perf_counter()
        bar = tqdm(
            total=claim.end - claim.start,
            desc=f"{claim.kind} {claim.datastore_id[:8]} ckpt {claim.checkpoint}",
            unit="ex",
            disable=claim.kind != "featurize" or not sys.stderr.isatty(),
        )

        def on_batch(rows: int) -> None:
            bar.update(rows)
            beat.check()

        try:
            with Heartbeat(self.factory, claim, self.owner, self.settings) as beat, bar:
                run_unit(self.factory, claim, self.settings.device, on_batch=on_batch)
                beat.check()
        except UnitAborted:
            self._after_abort(claim)
            return True
        except Exception as exc:  # the unit failed: retry it, or fail the build
            self._after_failure(claim, exc)
            return True
        with transaction(self.factory) as session:
            finish_unit(session, claim, self.owner, time.perf_counter() - started)
        return True

    def _after_abort(self, claim: Claim) -> None:
        with self.factory() as session:
            store = session.get(Datastore, claim.datastore_id)
            if store is not None and store.cancel_requested:
                remove_artifacts(store.path)

    def _after_failure(self, claim: Claim, exc: Exception) -> None:
        detail = f"{claim.kind} unit failed: {type(exc).__name__}: {exc}"
        log.error("%s\n%s", detail, traceback.format_exc())
        with transaction(self.factory) as session:
            if claim.attempts >= self.settings.max_attempts:
                fail_build(session, claim.datastore_id, detail)
            release_for_retry(session, claim, self.owner, detail)

    def run(self, once: bool = False, stop: threading.Event | None = None) -> None:
        """Work until stopped (or, with ``once``, until nothing is left to claim)."""
        stop = stop or threading.Event()
        while not stop.is_set():
            if not self.run_one():
                if once:
                    return
                stop.wait(self.settings.poll_seconds)
