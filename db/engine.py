"""Database engine and sessions; SQLite gets WAL and a busy timeout for its single writer."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str, connect_timeout: int = 5) -> Engine:
    """An engine that fails fast when the server is down (a 503, not a hung request)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(connection, _record):
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    connect_args = {}
    if "connect_timeout" not in make_url(url).query:
        connect_args["connect_timeout"] = connect_timeout
    return create_engine(url, pool_pre_ping=True, pool_timeout=10, connect_args=connect_args)


def describe_url(url: str) -> str:
    """The URL as logs may show it: never its password."""
    return make_url(url).render_as_string(hide_password=True)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with factory() as session, session.begin():
        yield session
