"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import logging
import tempfile

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from gradstore.db import records
from gradstore.service.metrics import exposition
from gradstore.service.problems import problem, problem_responses

router = APIRouter(tags=["health"])
log = logging.getLogger("gradstore.api")


@router.get("/healthz")
def healthz() -> dict:
    """Alive: the process answers (whatever its dependencies)."""
    return {"status": "ok"}


@router.get("/readyz", responses=problem_responses(503))
def readyz(request: Request):
    """Ready when the database answers and the artifact root is writable (else 503)."""
    settings = request.app.state.settings
    retry = {"Retry-After": str(settings.retry_after_seconds)}
    try:
        with request.app.state.sessions() as session:
            records.ping(session)
    except Exception as exc:
        log.warning("not ready: database unreachable (%s)", exc)
        return problem(
            503,
            "Not ready",
            f"database unreachable ({type(exc).__name__})",
            request.url.path,
            "database-unavailable",
            retry,
        )
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=settings.data_dir):
            pass
    except OSError as exc:
        log.warning("not ready: artifact root %s not writable (%s)", settings.data_dir, exc)
        return problem(
            503,
            "Not ready",
            f"artifact root not writable ({type(exc).__name__})",
            request.url.path,
            "service-unavailable",
            retry,
        )
    return {"status": "ready"}


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}
    },
)
def metrics(request: Request) -> Response:
    """Prometheus text format: the API's requests and selections, builds, queue and workers.

    Answers even when the database is down (``gradstore_database_up 0``): the API's own
    counters are what an operator needs most during an outage.
    """
    settings = request.app.state.settings
    body = exposition(request.app.state.sessions, settings.lease_seconds)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
