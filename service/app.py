"""The FastAPI application: API v1 over the core library."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from sqlalchemy import text

from gradstore import __version__
from gradstore.db.engine import describe_url, make_engine, make_sessionmaker
from gradstore.db.settings import Settings, apply_torch_threads, get_settings
from gradstore.service import problem_types, problems
from gradstore.service.deps import require_api_key
from gradstore.service.engines import EngineCache
from gradstore.service.middleware import RequestMiddleware
from gradstore.service.routes import datasets, datastores, health, methods, selections

log = logging.getLogger("gradstore.api")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine = make_engine(settings.database_url, settings.database_connect_timeout)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        apply_torch_threads(settings)
        app.state.settings = settings
        app.state.sessions = make_sessionmaker(engine)
        app.state.engines = EngineCache(settings.engine_cache_size, settings.device)
        _log_startup(engine, settings)
        yield
        engine.dispose()

    app = FastAPI(
        title="gradstore",
        version=__version__,
        summary="Choose instruction-tuning data for a target from a reusable LESS datastore.",
        lifespan=lifespan,
        docs_url=None,  # served below from packaged files, not a CDN
        redoc_url=None,
    )
    _serve_docs(app)
    problems.install(app)
    app.add_middleware(RequestMiddleware)
    auth = [Depends(require_api_key)]
    app.include_router(datasets.router, dependencies=auth)
    app.include_router(datastores.router, dependencies=auth)
    app.include_router(selections.router, dependencies=auth)
    app.include_router(methods.router, dependencies=auth)
    app.include_router(health.router)
    app.include_router(problem_types.router)
    return app


DOCS_ASSETS = "/docs-assets"


def _serve_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from the swagger-ui-bundle package's files: it works on a host
    without internet access, where FastAPI's default page (scripts from a CDN) is blank."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount(DOCS_ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        )


def _log_startup(engine, settings: Settings) -> None:
    """Start whatever the database's state: requests answer 503 until it is back."""
    where = describe_url(settings.database_url)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        log.info("api started; database %s reachable", where)
    except Exception as exc:
        log.error(
            "api started, but database %s is unreachable (%s): requests answer 503 "
            "until it is back",
            where,
            type(exc).__name__,
        )
    if not settings.roots:
        log.warning(
            "GRADSTORE_MODEL_ROOTS is not set: builds may name any directory of this "
            "host as a model"
        )
