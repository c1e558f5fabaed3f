"""The worker loop on SQLite and PostgreSQL: heartbeats, cancellation, failures, orphans."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from gradstore.db.engine import transaction
from gradstore.db.models import Dataset, Datastore, WorkUnit
from gradstore.db.queue import claim_next
from gradstore.db.settings import Settings
from gradstore.worker.runner import Heartbeat, UnitAborted, Worker
from gradstore.worker.stages import BuildGone, run_unit

pytest_plugins = ["queue_fixtures"]  # factory, add_units, database_url


@pytest.fixture
def settings(tmp_path, database_url) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        lease_seconds=0.3,
        heartbeat_seconds=0.05,
        poll_seconds=0.01,
        max_attempts=2,
    )


def cancel(factory, store_id: str = "s1") -> None:
    with transaction(factory) as session:
        session.execute(
            sa.update(Datastore)
            .where(Datastore.id == store_id)
            .values(cancel_requested=True, status="cancelled")
        )


def test_the_heartbeat_keeps_the_lease_and_notices_cancellation(factory, add_units, settings):
    add_units(1)
    claim = claim_next(factory, "w1", settings.lease_seconds)
    with Heartbeat(factory, claim, "w1", settings) as beat:
        time.sleep(0.7)  # more than two lease lengths
        assert claim_next(factory, "w2", 60) is None
        beat.check()
        cancel(factory)
        deadline = time.monotonic() + 5
        while not beat.lost.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(UnitAborted, match="cancelled"):
            beat.check()


def test_a_cancelled_build_runs_nothing(factory, add_units, settings):
    add_units(1)
    claim = claim_next(factory, "w1", 60)
    cancel(factory)
    with pytest.raises(BuildGone):
        run_unit(factory, claim, None, lambda rows: None)


def test_a_failing_unit_is_retried_then_fails_the_build(factory, add_units, settings, tmp_path):
    not_a_model = tmp_path / "empty-model"
    not_a_model.mkdir()
    dataset = tmp_path / "pool.jsonl"
    dataset.write_text('{"prompt": "1+1=", "completion": "2"}\n')
    store_dir = tmp_path / "store"
    add_units(1, kind="warmup", status="queued", model_path=str(not_a_model), path=str(store_dir))
    with transaction(factory) as session:
        session.execute(sa.update(Dataset).values(path=str(dataset)))
    Worker(settings, factory).run(once=True)
    with factory() as session:
        store = session.get(Datastore, "s1")
        unit = session.scalars(sa.select(WorkUnit)).one()
    assert store.status == "failed", store.error
    assert store.error.startswith("warmup unit failed:") and str(not_a_model) in store.error
    assert unit.attempts == 2 and unit.error == store.error


def test_an_orphaned_worker_stops(factory, settings):
    worker = Worker(settings, factory, parent_pid=-1)  # no process has that parent
    assert worker.orphaned()
    started = time.monotonic()
    worker.run()  # without once: only the orphan check ends it
    assert time.monotonic() - started < 1


def test_an_unreachable_database_does_not_end_the_worker(tmp_path, caplog):
    settings = Settings(
        data_dir=tmp_path, database_url="postgresql+psycopg://u@127.0.0.1:9/none", poll_seconds=0.01
    )
    stop = threading.Event()
    worker = threading.Thread(target=Worker(settings).run, kwargs={"stop": stop})
    worker.start()
    time.sleep(1.5)
    assert worker.is_alive()  # still trying
    stop.set()
    worker.join(timeout=10)
    assert not worker.is_alive()
    unreachable = [r for r in caplog.records if "database unreachable" in r.message]
    assert len(unreachable) == 1  # said once per outage, not at every try
