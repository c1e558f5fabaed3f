"""The FastAPI application: API v1 over the core library."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request

from gradstore import __version__
from gradstore.db.engine import make_engine, make_sessionmaker
from gradstore.db.settings import Settings, apply_torch_threads, get_settings
from gradstore.service import problems
from gradstore.service.deps import require_api_key
from gradstore.service.engines import EngineCache
from gradstore.service.metrics import REQUEST_SECONDS, REQUESTS
from gradstore.service.routes import datasets, datastores, health, methods, selections


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine = make_engine(settings.database_url)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        apply_torch_threads(settings)
        app.state.settings = settings
        app.state.sessions = make_sessionmaker(engine)
        app.state.engines = EngineCache(settings.engine_cache_size, settings.device)
        yield
        engine.dispose()

    app = FastAPI(
        title="gradstore",
        version=__version__,
        summary="Choose instruction-tuning data for a target from a reusable LESS datastore.",
        lifespan=lifespan,
    )
    problems.install(app)
    auth = [Depends(require_api_key)]
    app.include_router(datasets.router, dependencies=auth)
    app.include_router(datastores.router, dependencies=auth)
    app.include_router(selections.router, dependencies=auth)
    app.include_router(methods.router, dependencies=auth)
    app.include_router(health.router)

    @app.middleware("http")
    async def _metrics(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        REQUESTS.labels(request.method, path, str(response.status_code)).inc()
        REQUEST_SECONDS.labels(path).observe(time.perf_counter() - started)
        return response

    return app
