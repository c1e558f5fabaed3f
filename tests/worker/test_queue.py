"""Leases on SQLite and PostgreSQL: claim order, expiry, concurrent claimers, ownership."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import sqlalchemy as sa

from gradstore.db.engine import transaction
from gradstore.db.models import Datastore
from gradstore.db.queue import (
    claim_next,
    complete,
    fail_exhausted,
    release_dead_local_leases,
    release_for_retry,
    renew,
)

pytest_plugins = ["queue_fixtures"]  # factory, add_units, database_url


def test_claims_are_ordered_and_exclusive(factory, add_units):
    add_units(3)
    claims = [claim_next(factory, "w1", 60) for _ in range(4)]
    assert [c.start for c in claims[:3]] == [0, 1, 2] and claims[3] is None
    assert all(c.attempts == 1 and c.datastore_id == "s1" for c in claims[:3])


def test_expired_leases_are_claimed_again_and_the_old_owner_loses(factory, add_units):
    add_units(1)
    first = claim_next(factory, "dead-worker", 0.3)
    assert claim_next(factory, "w2", 60) is None  # still leased
    time.sleep(0.5)
    second = claim_next(factory, "w2", 60)
    assert second is not None and second.id == first.id and second.attempts == 2
    assert not renew(factory, first, "dead-worker", 60)
    assert renew(factory, second, "w2", 60)
    with transaction(factory) as session:
        assert not complete(session, first, "dead-worker", 1.0)
        assert complete(session, second, "w2", 1.0)
    assert claim_next(factory, "w3", 60) is None


def test_a_renewed_lease_outlives_its_first_expiry(factory, add_units):
    add_units(1)
    claim = claim_next(factory, "w1", 0.4)
    for _ in range(4):
        time.sleep(0.2)
        assert renew(factory, claim, "w1", 0.4)
    assert claim_next(factory, "w2", 60) is None  # 0.8 s after the claim, still ours


def test_a_released_unit_is_retried_by_anyone(factory, add_units):
    add_units(1)
    claim = claim_next(factory, "w1", 60)
    with transaction(factory) as session:
        release_for_retry(session, claim, "w1", "boom")
    again = claim_next(factory, "w2", 60)
    assert again.id == claim.id and again.attempts == 2


def test_concurrent_claimers_never_share_a_unit(factory, add_units):
    add_units(40)
    got: dict[str, list[int]] = {}

    def claimer(name: str) -> None:
        mine = got.setdefault(name, [])
        while (claim := claim_next(factory, name, 60)) is not None:
            mine.append(claim.id)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [unit for units in got.values() for unit in units]
    assert len(everything) == 40 and len(set(everything)) == 40


def test_cancelled_and_finished_builds_are_not_claimed(factory, add_units):
    add_units(2)
    add_units(1, store_id="s2", status="ready")
    with transaction(factory) as session:
        session.execute(
            sa.update(Datastore)
            .where(Datastore.id == "s1")
            .values(cancel_requested=True, status="cancelled")
        )
    assert claim_next(factory, "w1", 60) is None


def test_a_unit_that_keeps_killing_its_worker_fails_the_build(factory, add_units):
    add_units(1)
    add_units(1, store_id="s2")
    for attempt in (1, 2):
        claim = claim_next(factory, f"doomed-{attempt}", 0.05, max_attempts=2)
        assert claim.datastore_id == "s1" and claim.attempts == attempt
        time.sleep(0.1)  # the worker died: its lease runs out
    assert fail_exhausted(factory, max_attempts=2) == ["s1"]
    claim = claim_next(factory, "w3", 60, max_attempts=2)
    assert claim.datastore_id == "s2"  # s1's unit is not tried a third time
    with factory() as session:
        store = session.get(Datastore, "s1")
        assert store.status == "failed" and "lost its worker 2 times" in store.error
        assert "doomed-2" in store.error
    assert fail_exhausted(factory, max_attempts=2) == []


def test_leases_of_dead_local_workers_are_released_at_once(factory, add_units):
    add_units(3)
    dead = subprocess.Popen(["true"])
    dead.wait()
    owners = [f"here:{dead.pid}:a", f"here:{os.getpid()}:b", f"elsewhere:{dead.pid}:c"]
    claims = [claim_next(factory, owner, 600) for owner in owners]
    assert release_dead_local_leases(factory, "here") == 1
    again = claim_next(factory, "here:1:new", 600)
    assert again.id == claims[0].id and again.attempts == 2  # no wait for the 600 s lease
    assert claim_next(factory, "w", 600) is None  # the live and the remote one keep theirs
