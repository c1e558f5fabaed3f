"""A migrated database on SQLite and (when configured) PostgreSQL, and rows to lease.

Loaded by the worker tests with ``pytest_plugins``, not kept in a conftest.py: tests import
``conftest`` by module name (``from conftest import TINY_BUILD``), which a second
conftest.py would shadow.
"""

from __future__ import annotations

import pytest

from gradstore.db.engine import make_engine, make_sessionmaker, transaction
from gradstore.db.models import Dataset, Datastore, WorkUnit
from gradstore.migrations import upgrade


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'queue.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    upgrade(url)
    return url


@pytest.fixture
def factory(database_url):
    engine = make_engine(database_url)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def add_units(factory):
    """``add_units(n, store_id=..., **datastore_fields)``: a build with n featurize units."""

    def add(n: int, store_id: str = "s1", kind: str = "featurize", **fields) -> str:
        with transaction(factory) as session:
            if session.get(Dataset, "d1") is None:
                session.add(Dataset(id="d1", name="d", num_examples=1, sha256="0" * 64, path="x"))
            values = {"model_path": "m", "config": {}, "path": "p", "status": "featurize"}
            session.add(Datastore(id=store_id, dataset_id="d1", **(values | fields)))
            session.flush()
            for i in range(n):
                session.add(WorkUnit(datastore_id=store_id, kind=kind, start=i, end=i + 1))
        return store_id

    return add
