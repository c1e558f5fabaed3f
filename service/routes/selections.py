"""The audit log of a datastore's selections: who asked what, and how long it took."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import func, select

from gradstore.api_models import SelectionPage
from gradstore.db.models import SelectionRecord
from gradstore.service.deps import SessionDep
from gradstore.service.problems import problem_responses
from gradstore.service.routes.datasets import Limit, Offset
from gradstore.service.routes.datastores import get_store_or_404

router = APIRouter(
    prefix="/v1/datastores", tags=["datastores"], responses=problem_responses(401, 404, 422, 503)
)


@router.get("/{datastore_id}/selections", response_model=SelectionPage)
def list_selections(
    datastore_id: str,
    session: SessionDep,
    limit: Limit = 100,
    offset: Offset = 0,
):
    """Past selections on this datastore, newest first (targets are kept by id only)."""
    get_store_or_404(session, datastore_id)
    mine = SelectionRecord.datastore_id == datastore_id
    rows = session.scalars(
        select(SelectionRecord)
        .where(mine)
        .order_by(SelectionRecord.created_at.desc(), SelectionRecord.id)
        .offset(offset)
        .limit(limit)
    ).all()
    count = session.scalar(select(func.count()).select_from(SelectionRecord).where(mine))
    return {"data": rows, "count": count}
