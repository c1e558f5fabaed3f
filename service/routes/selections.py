"""The audit log of a datastore's selections: who asked what, and how long it took."""

from __future__ import annotations

import json

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from gradstore.api_models import SelectionPage
from gradstore.db import records
from gradstore.db.models import SelectionRecord
from gradstore.errors import NotFoundError
from gradstore.service.deps import SessionDep, SettingsDep
from gradstore.service.problems import problem_responses
from gradstore.service.routes.datasets import Limit, Offset
from gradstore.service.routes.datastores import get_store_or_404, selection_results_dir

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
    rows, count = records.list_selections(session, datastore_id, limit, offset)
    return {"data": rows, "count": count}


@router.get(
    "/{datastore_id}/selections/{selection_id}/report",
    response_class=HTMLResponse,
    responses={200: {"content": {"text/html": {}}, "description": "The report page."}},
)
def selection_report(
    datastore_id: str, selection_id: str, session: SessionDep, settings: SettingsDep
):
    """An HTML report of one selection: score distribution, each subtask's share of the
    budget, coverage per target (with ``explain``), the top examples with their text, and
    the overlap with the other methods run on the same targets."""
    from gradstore.report.html import build_report, pool_examples, result_from_dict

    store = get_store_or_404(session, datastore_id)
    record = session.get(SelectionRecord, selection_id)
    results_dir = selection_results_dir(settings, datastore_id)
    path = results_dir / f"{selection_id}.json"
    if record is None or record.datastore_id != datastore_id or not path.is_file():
        raise NotFoundError(f"no selection {selection_id!r} with a stored answer on this store")
    results, labels = [result_from_dict(json.loads(path.read_text()))], [record.method]
    same_targets = records.other_selections(session, datastore_id, selection_id)
    seen = {record.method}
    for other in same_targets:  # the latest run of each other method on the same targets
        other_path = results_dir / f"{other.id}.json"
        same = other.request.get("target_ids") == record.request.get("target_ids")
        if same and other.method not in seen and other_path.is_file():
            results.append(result_from_dict(json.loads(other_path.read_text())))
            labels.append(other.method)
            seen.add(other.method)
    top = {s.id for s in results[0].selected[:20]}
    context = {
        "datastore": datastore_id,
        "selection": selection_id,
        "targets": len(record.request.get("target_ids", [])),
        "created": str(record.created_at),
    }
    page = build_report(results, pool_examples(store.path, top), labels=labels, context=context)
    return HTMLResponse(page)
