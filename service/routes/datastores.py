"""Datastores: start a build (202), watch it, verify it, remove it, and query it."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import APIRouter, Response
from fastapi.encoders import jsonable_encoder

from gradstore.api_models import (
    ACTIVE_BUILD,
    DatastoreCreate,
    DatastorePage,
    DatastorePublic,
    DatastoreStatus,
    MethodsRequest,
    SelectRequest,
)
from gradstore.config import BuildConfig
from gradstore.db import jobs
from gradstore.db.integrity import fingerprint, without_paths
from gradstore.db.logs import bind, current
from gradstore.db.model_roots import resolve_directory
from gradstore.db.models import Datastore
from gradstore.db.queue import verifications_in_progress
from gradstore.db.units import VERIFIABLE
from gradstore.errors import (
    ConflictError,
    GradstoreError,
    InvalidInputError,
    ManifestMismatchError,
    MissingArtifactError,
    NotFoundError,
    NotReadyError,
    PayloadTooLargeError,
)
from gradstore.examples import load_examples
from gradstore.files import remove_tree
from gradstore.selection import get_method, run_selection, select_response_model
from gradstore.service.deps import EnginesDep, SessionDep, SettingsDep
from gradstore.service.errors import DatastoreIntegrityError, ServiceUnavailableError
from gradstore.service.metrics import INTEGRITY_FAILURES, SELECT_SECONDS, observe_phases
from gradstore.service.problems import problem_responses
from gradstore.service.routes.datasets import Limit, Offset, get_dataset_or_404, looks_like_id
from gradstore.service.submission import build_config, check_bounds, check_submission
from gradstore.validation import check_extension, check_without_model

ERRORS = problem_responses(400, 401, 404, 409, 413, 422, 503)
router = APIRouter(prefix="/v1/datastores", tags=["datastores"], responses=ERRORS)
log = logging.getLogger("gradstore.api")


def public(store: Datastore, verifying: bool = False) -> dict:
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
        "warnings": store.warnings or [],
        "verified_at": store.verified_at,
        "verifying": verifying,
        "config": store.config,
        "methods": store.methods or [],
        "pending_methods": jobs.pending_methods_of(store),
        "created_at": store.created_at,
    }


def check_methods(methods: list[str]) -> list[str]:
    """Known method names, deduplicated in order; an unknown one is a 422 naming it."""
    from gradstore.selection import extra_artifacts

    unique = list(dict.fromkeys(methods))
    for name in unique:
        get_method(name)
    extra_artifacts(unique)
    return unique


def get_store_or_404(session, datastore_id: str) -> Datastore:
    store = session.get(Datastore, datastore_id) if looks_like_id(datastore_id) else None
    if store is None:
        raise NotFoundError(f"no datastore with id {datastore_id[:80]!r}")
    bind(datastore_id=store.id)  # on every log line of this request from here on
    return store


@router.post("", status_code=202, response_model=DatastorePublic, responses=problem_responses(403))
def create_datastore(
    body: DatastoreCreate, response: Response, session: SessionDep, settings: SettingsDep
):
    """Queue a build; workers pick it up. Poll the ``Location`` until status is ready.

    Without ``model``, methods that read the text alone (bm25, dsir, random) get a store in
    seconds: no warmup, no gradient features.

    Everything that can be known now is checked now: the paths (inside the model roots),
    the options, the index factory, the LoRA targets against the model, the template and
    the warmup checkpoints. ``warnings`` says what will work but probably not as meant
    (a warmup too short to move the adapter).
    """
    dataset = get_dataset_or_404(session, body.dataset_id)
    model = body.model.path if body.model is not None else None
    model_dir = None if model is None else resolve_directory(model, settings.roots, "model.path")
    warmup_dirs = [
        resolve_directory(d, settings.roots, f"warmup_from[{i}]")
        for i, d in enumerate(body.warmup_from)
    ]
    config = build_config(body)
    if config.methods is not None:
        config = config.model_copy(update={"methods": check_methods(config.methods)})
    if model_dir is None:  # methods that read the text alone
        check_bounds(config, dataset.num_examples)
        plan = check_without_model(config, warmup_dirs)
    elif not (model_dir / "config.json").is_file():
        raise InvalidInputError(
            f"model.path {model!r} has no config.json: give a directory saved with "
            "save_pretrained (nothing is downloaded from a hub)"
        )
    else:
        plan = check_submission(model_dir, config, warmup_dirs, dataset.num_examples)
    store = jobs.enqueue_build(
        session,
        dataset_id=dataset.id,
        model_path=None if model_dir is None else str(model_dir),
        config=config.model_dump(mode="json"),
        warmup_from=[str(d) for d in warmup_dirs],
        warnings=plan.warnings,
        request_id=current("request_id"),
        datastores_dir=settings.datastores_dir,
    )
    log.info("build queued", extra={"datastore_id": store.id, "warnings": len(plan.warnings)})
    for warning in plan.warnings:
        log.warning("build %s: %s", store.id, warning, extra={"datastore_id": store.id})
    response.headers["Location"] = f"/v1/datastores/{store.id}"
    return public(store)


@router.get("", response_model=DatastorePage)
def list_datastores(session: SessionDep, limit: Limit = 100, offset: Offset = 0):
    rows = jobs.list_datastores(session, limit, offset)
    count = jobs.count_datastores(session)
    verifying = verifications_in_progress(session, [r.id for r in rows])
    return {"data": [public(r, r.id in verifying) for r in rows], "count": count}


@router.get("/{datastore_id}", response_model=DatastorePublic)
def get_datastore(datastore_id: str, session: SessionDep):
    store = get_store_or_404(session, datastore_id)
    return public(store, store.id in verifications_in_progress(session, [store.id]))


@router.delete("/{datastore_id}", status_code=204, response_class=Response)
def delete_datastore(
    datastore_id: str, session: SessionDep, engines: EnginesDep, settings: SettingsDep
):
    """Remove a datastore and its artifacts; a build in progress is cancelled.

    The record is gone when this answers (a GET is a 404): the workers of a cancelled build
    see it at their next batch, stop, and remove whatever they wrote meanwhile.
    """
    store = get_store_or_404(session, datastore_id)
    engines.evict(store.id)
    was_building = store.status in ACTIVE_BUILD
    jobs.remove_datastore(session, store)
    remove_tree(selection_results_dir(settings, store.id))
    remove_tree(store.path)
    log.info(
        "datastore removed" + (" (build cancelled)" if was_building else ""),
        extra={"datastore_id": store.id},
    )
    return Response(status_code=204)


@router.post("/{datastore_id}/verify", status_code=202, response_model=DatastorePublic)
def verify_datastore(datastore_id: str, session: SessionDep, settings: SettingsDep):
    """Queue a full check of every file's sha256 (and the model's) by a worker.

    A ready store keeps answering meanwhile; one that fails the check is marked failed. A
    store failed by an integrity check whose files were restored is ready again once they
    pass.
    """
    store = get_store_or_404(session, datastore_id)
    if store.status not in VERIFIABLE or (
        store.status == DatastoreStatus.FAILED and store.verified_fingerprint is None
    ):
        raise ConflictError(
            f"datastore {store.id} is {store.status}: only a ready datastore, or one failed by "
            "an integrity check, can be verified"
        )
    jobs.request_verification(session, store.id, settings.max_attempts, current("request_id"))
    log.info("verification queued", extra={"datastore_id": store.id})
    return public(store, verifying=True)


def _integrity_failure(
    session, store: Datastore, engines, settings, exc: GradstoreError
) -> DatastoreIntegrityError | ServiceUnavailableError:
    """Fail the store for good (until verified again), drop its engine, say why.

    While a finish unit adds methods, the manifest grows under the loaded engine: that is
    no fault of the store, so the query is asked to retry (the unit records the new
    fingerprint when it finishes) and the store stays ready.
    """
    if jobs.extending(session, store.id):
        engines.evict(store.id)
        return ServiceUnavailableError(
            f"datastore {store.id} is gaining methods and its manifest is being updated; "
            "retry in a moment",
            settings.retry_after_seconds,
        )
    reason = without_paths(exc.detail, store.path, settings.data_dir.resolve())
    jobs.fail_integrity(session, store.id, reason)
    engines.evict(store.id)
    INTEGRITY_FAILURES.inc()
    log.error("datastore failed its integrity check: %s", reason, extra={"datastore_id": store.id})
    return DatastoreIntegrityError(
        f"datastore {store.id} failed its integrity check and is now marked failed: {reason}"
    )


def _load(store: Datastore, session, engines, settings):
    try:
        return engines.get(store.id, store.path, store.verified_fingerprint)
    except (ManifestMismatchError, NotReadyError) as exc:  # NotReady: its manifest is gone
        raise _integrity_failure(session, store, engines, settings, exc) from None
    except GradstoreError:
        raise
    except (OSError, ValueError) as exc:  # e.g. the model directory is not mounted
        log.error("datastore could not be loaded", exc_info=True, extra={"datastore_id": store.id})
        raise ServiceUnavailableError(
            f"datastore {store.id} could not be loaded ({type(exc).__name__}); the operator "
            "can find why in the logs by the request id",
            settings.retry_after_seconds,
        ) from None


@router.post(
    "/{datastore_id}/methods",
    status_code=202,
    response_model=DatastorePublic,
    responses={200: {"model": DatastorePublic, "description": "It serves them already."}},
)
def add_methods(datastore_id: str, body: MethodsRequest, response: Response, session: SessionDep):
    """Make a ready store serve more methods: compute the artifacts they need, nothing else.

    The store stays ready and its methods keep answering while workers add the artifacts:
    an ``extend`` unit checks the store's files, then the new artifacts are computed in row
    ranges leased like featurize shards (several workers share them) and a ``finish`` unit
    adds them to the manifest; the new methods answer once ``pending_methods`` no longer
    lists them. Gradient feature kinds are made by the build
    only: a method that needs a kind the store lacks is a 409.
    """
    store = get_store_or_404(session, datastore_id)
    methods = check_methods(body.methods)
    if store.status != DatastoreStatus.READY:
        raise NotReadyError(f"datastore {datastore_id} is {store.status}; add methods once ready")
    features: set[str] = set(BuildConfig.model_validate(store.config).pool_features)
    check_extension(methods, store.model_path is not None, bool(store.checkpoints), features)
    new = [m for m in methods if m not in (store.methods or [])]
    response.headers["Location"] = f"/v1/datastores/{store.id}"
    if not new:
        response.status_code = 200
        return public(store)
    jobs.request_methods(session, store, new, current("request_id"))
    return public(store)


@router.post("/{datastore_id}/select", response_model=select_response_model())
def select_training_data(
    datastore_id: str,
    body: SelectRequest,
    session: SessionDep,
    settings: SettingsDep,
    engines: EnginesDep,
):
    """Rank the pool for the targets (best first), with per-phase timings.

    A ranking is returned only if every file it read still has the fingerprint of the
    store's last full verification, before and after the search; otherwise the store is
    marked failed and the answer is a 409.

    A plain ``def``: FastAPI runs it in its threadpool, so loading a store and computing
    target gradients never block the event loop; each engine serialises its own GPU work.
    """
    store = get_store_or_404(session, datastore_id)
    # faults of the request itself first, whatever the state of the store
    if len(body.targets) > settings.max_targets:
        raise PayloadTooLargeError(
            f"{len(body.targets)} targets; at most {settings.max_targets} per query"
        )
    get_method(body.method).parse_options(body.options)
    records = [
        t.model_dump(exclude_none=True) | {"id": t.id or f"target-{i}"}
        for i, t in enumerate(body.targets)
    ]
    targets = load_examples(records)
    if store.status != DatastoreStatus.READY:
        engines.evict(store.id)
        reason = f": {store.error}" if store.error else ""
        raise NotReadyError(f"datastore {store.id} is {store.status}, not ready{reason}")
    if store.verified_fingerprint is None:
        raise ServiceUnavailableError(
            f"datastore {store.id} awaits its first full verification (a worker runs it); "
            "retry later",
            settings.retry_after_seconds,
        )

    with SELECT_SECONDS.labels(body.method).time():
        engine = _load(store, session, engines, settings)
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
            if fingerprint(engine.datastore) != store.verified_fingerprint:
                raise ManifestMismatchError(
                    "files of the datastore changed on disk since it was verified"
                )
        except MissingArtifactError as exc:  # the fix names this store's own URL
            exc.detail = exc.detail.replace("{id}", store.id)
            exc.args = (exc.detail,)
            raise
        except ManifestMismatchError as exc:
            raise _integrity_failure(session, store, engines, settings, exc) from None
    observe_phases(result.method, result.timings_ms)
    record = jobs.record_selection(
        session,
        datastore_id=store.id,
        method=result.method,
        num_targets=len(targets),
        num_selected=len(result.selected),
        request=body.model_dump(mode="json", exclude={"targets"})
        | {"target_ids": [t.id for t in targets]},
        timings_ms=result.timings_ms,
    )
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
        "coverage": result.details.get("coverage"),
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
