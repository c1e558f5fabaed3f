"""Datastores: start a build (202), watch it, cancel or remove it, and query it."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Query, Response
from fastapi.encoders import jsonable_encoder
from sqlalchemy import delete, func, select

from gradstore.api_models import (
    ACTIVE_BUILD,
    DatastoreCreate,
    DatastorePage,
    DatastorePublic,
    DatastoreStatus,
    MethodsRequest,
    SelectRequest,
    SelectResponse,
    UnitKind,
)
from gradstore.config import BuildConfig
from gradstore.db.models import Datastore, SelectionRecord, UnitState, WorkUnit
from gradstore.errors import (
    ConflictError,
    InvalidInputError,
    MissingArtifactError,
    NotFoundError,
    NotReadyError,
    PayloadTooLargeError,
)
from gradstore.examples import load_examples
from gradstore.files import remove_tree
from gradstore.selection import get_method, run_selection
from gradstore.service.deps import EnginesDep, SessionDep, SettingsDep
from gradstore.service.metrics import SELECT_SECONDS
from gradstore.service.problems import problem_responses
from gradstore.service.routes.datasets import get_dataset_or_404

ERRORS = problem_responses(401, 404, 409, 413, 422)
router = APIRouter(prefix="/v1/datastores", tags=["datastores"], responses=ERRORS)


def public(store: Datastore) -> dict:
    rate = store.examples_per_s
    remaining = max(0, store.progress_total - store.progress_done)
    return {
        "id": store.id,
        "dataset_id": store.dataset_id,
        "status": store.status,
        "progress": {
            "stage": store.status,
            "done": store.progress_done,
            "total": store.progress_total,
            "examples_per_s": rate,
            "eta_s": round(remaining / rate, 1) if rate and store.status in ACTIVE_BUILD else None,
        },
        "checkpoints": [
            {"index": c["index"], "learning_rate": c["learning_rate"]} for c in store.checkpoints
        ],
        "num_examples": store.num_examples,
        "dim": store.dim,
        "error": store.error,
        "skipped": store.skipped or [],
        "config": store.config,
        "methods": store.methods or [],
        "pending_methods": pending_methods(store),
        "created_at": store.created_at,
    }


def pending_methods(store: Datastore) -> list[str]:
    """Methods of extend units not yet done (nor failed) on this store."""
    from sqlalchemy.orm import object_session

    session = object_session(store)
    if session is None:
        return []
    payloads = session.scalars(
        select(WorkUnit.payload).where(
            WorkUnit.datastore_id == store.id,
            WorkUnit.kind == UnitKind.EXTEND,
            WorkUnit.state.in_((UnitState.PENDING, UnitState.RUNNING)),
        )
    ).all()
    return sorted({m for p in payloads for m in (p or {}).get("methods", [])})


def check_methods(methods: list[str]) -> list[str]:
    """Known method names, deduplicated in order; an unknown one is a 422 naming it."""
    from gradstore.selection import extra_artifacts

    unique = list(dict.fromkeys(methods))
    for name in unique:
        get_method(name)
    extra_artifacts(unique)
    return unique


def get_store_or_404(session, datastore_id: str) -> Datastore:
    store = session.get(Datastore, datastore_id)
    if store is None:
        raise NotFoundError(f"no datastore with id {datastore_id!r}")
    return store


@router.post("", status_code=202, response_model=DatastorePublic)
def create_datastore(
    body: DatastoreCreate, response: Response, session: SessionDep, settings: SettingsDep
):
    """Queue a build; workers pick it up. Poll the ``Location`` until status is ready."""
    get_dataset_or_404(session, body.dataset_id)
    if not Path(body.model.path).is_dir():
        raise InvalidInputError(f"model.path {body.model.path!r} is not a local directory")
    for directory in body.warmup_from:
        if not Path(directory).is_dir():
            raise InvalidInputError(f"warmup_from {directory!r} is not a local directory")
    config = body.build_config()
    if config.methods is not None:
        config = config.model_copy(update={"methods": check_methods(config.methods)})
    if not (Path(body.model.path) / "config.json").is_file():
        raise InvalidInputError(
            f"model.path {body.model.path!r} has no config.json: give a directory saved with "
            "save_pretrained (nothing is downloaded from a hub)"
        )
    store = Datastore(
        dataset_id=body.dataset_id,
        model_path=str(Path(body.model.path).resolve()),
        config=config.model_dump(mode="json"),
        warmup_from=[str(Path(d).resolve()) for d in body.warmup_from],
        path="",
    )
    session.add(store)
    session.flush()
    store.path = str((settings.datastores_dir / store.id).resolve())
    session.add(WorkUnit(datastore_id=store.id, kind=UnitKind.WARMUP))
    session.commit()
    response.headers["Location"] = f"/v1/datastores/{store.id}"
    return public(store)


@router.get("", response_model=DatastorePage)
def list_datastores(
    session: SessionDep, limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0)
):
    rows = session.scalars(
        select(Datastore).order_by(Datastore.created_at, Datastore.id).offset(offset).limit(limit)
    ).all()
    count = session.scalar(select(func.count()).select_from(Datastore))
    return {"data": [public(r) for r in rows], "count": count}


@router.get("/{datastore_id}", response_model=DatastorePublic)
def get_datastore(datastore_id: str, session: SessionDep):
    return public(get_store_or_404(session, datastore_id))


@router.delete("/{datastore_id}", status_code=204, response_class=Response)
def delete_datastore(
    datastore_id: str, session: SessionDep, engines: EnginesDep, settings: SettingsDep
):
    """Cancel a build in progress, or remove a finished datastore; artifacts are deleted."""
    store = get_store_or_404(session, datastore_id)
    engines.evict(store.id)
    if store.status in ACTIVE_BUILD:
        store.cancel_requested = True
        store.status = DatastoreStatus.CANCELLED
        session.execute(
            delete(WorkUnit).where(
                WorkUnit.datastore_id == store.id, WorkUnit.state == UnitState.PENDING
            )
        )
        session.commit()
    else:
        session.execute(delete(SelectionRecord).where(SelectionRecord.datastore_id == store.id))
        session.execute(delete(WorkUnit).where(WorkUnit.datastore_id == store.id))
        session.delete(store)
        session.commit()
        remove_tree(selection_results_dir(settings, store.id))
    remove_tree(store.path)
    return Response(status_code=204)


@router.post("/{datastore_id}/methods", status_code=202, response_model=DatastorePublic)
def add_methods(datastore_id: str, body: MethodsRequest, response: Response, session: SessionDep):
    """Make a ready store serve more methods: compute the artifacts they need, nothing else.

    The store stays ready and its methods keep answering while workers add the artifacts
    (one ``extend`` work unit, leased like a build's); the new methods answer once
    ``pending_methods`` no longer lists them. Gradient feature kinds are made by the build
    only: a method that needs a kind the store lacks is a 409.
    """
    from gradstore.artifacts import ARTIFACTS
    from gradstore.selection import method_requirements

    store = get_store_or_404(session, datastore_id)
    methods = check_methods(body.methods)
    if store.status != DatastoreStatus.READY:
        raise NotReadyError(f"datastore {datastore_id} is {store.status}; add methods once ready")
    kinds = set(BuildConfig.model_validate(store.config).pool_features)
    for method in methods:
        for artifact in method_requirements(method).artifacts:
            if not ARTIFACTS[artifact].extendable and artifact.split(".", 1)[-1] not in kinds:
                raise ConflictError(
                    f"method {method!r} needs {artifact!r}, which only a build makes: create "
                    f"a datastore whose pool_features include {artifact.split('.', 1)[-1]!r}"
                )
    new = [m for m in methods if m not in (store.methods or [])]
    response.headers["Location"] = f"/v1/datastores/{store.id}"
    if not new:
        response.status_code = 200
        return public(store)
    count = session.scalar(
        select(func.count()).where(
            WorkUnit.datastore_id == store.id, WorkUnit.kind == UnitKind.EXTEND
        )
    )
    session.add(
        WorkUnit(
            datastore_id=store.id,
            kind=UnitKind.EXTEND,
            checkpoint=int(count or 0),  # one unit per request (unique with kind and start)
            payload={"methods": new},
        )
    )
    session.commit()
    return public(store)


@router.post("/{datastore_id}/select", response_model=SelectResponse)
def select_training_data(
    datastore_id: str,
    body: SelectRequest,
    session: SessionDep,
    settings: SettingsDep,
    engines: EnginesDep,
):
    """Rank the pool for the targets (best first), with per-phase timings.

    A plain ``def``: FastAPI runs it in its threadpool, so loading a store and computing
    target gradients never block the event loop; each engine serialises its own GPU work.
    """
    store = get_store_or_404(session, datastore_id)
    # faults of the request itself first, whatever the state of the store
    if len(body.targets) > settings.max_targets:
        raise PayloadTooLargeError(
            f"{len(body.targets)} targets; at most {settings.max_targets} per query"
        )
    get_method(body.method)
    records = [
        t.model_dump(exclude_none=True) | {"id": t.id or f"target-{i}"}
        for i, t in enumerate(body.targets)
    ]
    targets = load_examples(records)
    if store.status != DatastoreStatus.READY:
        raise NotReadyError(f"datastore {datastore_id} is {store.status}, not ready")

    with SELECT_SECONDS.labels(body.method).time():
        engine = engines.get(store.id, store.path)
        try:
            result = run_selection(
                engine,
                targets,
                body.method,
                body.top_k,
                body.fraction,
                body.options,
                explain=body.explain,
            )
        except MissingArtifactError as exc:  # the fix names this store's own URL
            exc.detail = exc.detail.replace("{id}", store.id)
            exc.args = (exc.detail,)
            raise
    record = SelectionRecord(
        datastore_id=store.id,
        method=result.method,
        num_targets=len(targets),
        num_selected=len(result.selected),
        request=body.model_dump(mode="json", exclude={"targets"})
        | {"target_ids": [t.id for t in targets]},
        timings_ms=result.timings_ms,
    )
    session.add(record)
    session.flush()
    answer = {
        "datastore_id": store.id,
        "method": result.method,
        "selected": [
            {"id": s.id, "score": s.score, "subtask": s.subtask, "weight": s.weight}
            for s in result.selected
        ],
        "num_candidates": result.num_candidates,
        "timings_ms": result.timings_ms,
        "details": result.details,
        "explanation": result.explanation,
        "selection_id": record.id,
    }
    save_selection_result(settings, store.id, record.id, answer)
    session.commit()
    return answer


def selection_results_dir(settings, datastore_id: str) -> Path:
    """Where the answers of a datastore's selections are kept (for their reports)."""
    return settings.data_dir / "selections" / datastore_id


def save_selection_result(settings, datastore_id: str, selection_id: str, answer: dict) -> None:
    from gradstore.files import atomic_write_json

    path = selection_results_dir(settings, datastore_id) / f"{selection_id}.json"
    atomic_write_json(path, jsonable_encoder(answer))
