"""Leases on SQLite and PostgreSQL: claim order, expiry, concurrent claimers, ownership."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from migrations import upgrade
from service.db import make_engine, make_sessionmaker, transaction
from service.models import Dataset, Datastore, WorkUnit
from worker.queue import claim_next, complete, renew


@pytest.fixture(params=["sqlite", "postgresql"])
def factory(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'queue.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    upgrade(url)
    engine = make_engine(url)
    yield make_sessionmaker(engine)
    engine.dispose()


def add_units(factory, n: int, store_id: str = "s1", status: str = "featurize") -> None:
    with transaction(factory) as session:
        if session.get(Dataset, "d1") is None:
            session.add(Dataset(id="d1", name="d", num_examples=1, sha256="0" * 64, path="x"))
        session.add(Datastore(id=store_id, dataset_id="d1", model_path="m", config={}, path="p"))
        session.flush()
        for i in range(n):
            session.add(WorkUnit(datastore_id=store_id, kind="featurize", start=i, end=i + 1))


def test_claims_are_ordered_and_exclusive(factory):
    add_units(factory, 3)
    claims = [claim_next(factory, "w1", 60) for _ in range(4)]
    assert [c.start for c in claims[:3]] == [0, 1, 2] and claims[3] is None
    assert all(c.attempts == 1 for c in claims[:3])


def test_expired_leases_are_claimed_again_and_the_old_owner_loses(factory):
    add_units(factory, 1)
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


def test_concurrent_claimers_never_share_a_unit(factory):
    add_units(factory, 40)
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


def test_cancelled_builds_are_not_claimed(factory):
    add_units(factory, 2)
    with transaction(factory) as session:
        session.execute(sa.update(Datastore).values(cancel_requested=True, status="cancelled"))
    assert claim_next(factory, "w1", 60) is None
