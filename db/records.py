"""The queries the API's routes make of datasets and the selection audit log.

Routes call these and never write SQL themselves (tests/service/test_routes_free_of_sql.py).
"""

from __future__ import annotations

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from gradstore.db.models import Dataset, SelectionRecord


def ping(session: Session) -> None:
    """Raises when the database does not answer."""
    session.execute(text("SELECT 1"))


def list_datasets(session: Session, limit: int, offset: int) -> list[Dataset]:
    return list(
        session.scalars(
            select(Dataset).order_by(Dataset.created_at, Dataset.id).offset(offset).limit(limit)
        ).all()
    )


def count_datasets(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(Dataset)) or 0)


def datasets_with_sha256(session: Session, digest: str) -> int:
    """How many dataset records name the file of this hash."""
    return int(session.scalar(select(func.count()).where(Dataset.sha256 == digest)) or 0)


def list_selections(
    session: Session, datastore_id: str, limit: int, offset: int
) -> tuple[list[SelectionRecord], int]:
    """A page of the store's selections, newest first, and how many it has in all."""
    mine = SelectionRecord.datastore_id == datastore_id
    rows = session.scalars(
        select(SelectionRecord)
        .where(mine)
        .order_by(SelectionRecord.created_at.desc(), SelectionRecord.id)
        .offset(offset)
        .limit(limit)
    ).all()
    count = session.scalar(select(func.count()).select_from(SelectionRecord).where(mine))
    return list(rows), int(count or 0)


def other_selections(
    session: Session, datastore_id: str, selection_id: str, limit: int = 200
) -> list[SelectionRecord]:
    """The store's latest selections other than this one, newest first."""
    return list(
        session.scalars(
            select(SelectionRecord)
            .where(SelectionRecord.datastore_id == datastore_id, SelectionRecord.id != selection_id)
            .order_by(SelectionRecord.created_at.desc())
            .limit(limit)
        ).all()
    )
