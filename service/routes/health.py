"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import tempfile

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from gradstore.service.metrics import refresh_build_gauges
from gradstore.service.problems import problem

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request):
    """Ready when the database answers and the artifact root is writable."""
    settings = request.app.state.settings
    try:
        with request.app.state.sessions() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:
        return problem(503, "Not ready", f"database unreachable: {exc}")
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=settings.data_dir):
            pass
    except OSError as exc:
        return problem(503, "Not ready", f"artifact root {settings.data_dir} not writable: {exc}")
    return {"status": "ready"}


@router.get("/metrics")
def metrics(request: Request) -> Response:
    """Prometheus text format: HTTP and selection latency, builds and their progress."""
    with request.app.state.sessions() as session:
        refresh_build_gauges(session)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
