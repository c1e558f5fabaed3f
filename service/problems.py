"""Every error as application/problem+json (RFC 9457), one documented type per error class.

A problem's ``type`` is ``/problems/<slug>``, a reference the service resolves itself
(``GET /problems/<slug>`` explains it); every body carries the ``request_id`` that finds
its log lines. A 500 says nothing but that id: its exception, with any SQL, path or host in
it, goes to the log only. An unreachable database is a 503 with ``Retry-After``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from gradstore.db.logs import current
from gradstore.db.model_roots import ForbiddenPathError
from gradstore.errors import (
    ConflictError,
    GradstoreError,
    InvalidExampleError,
    InvalidInputError,
    ManifestMismatchError,
    NotFoundError,
    NotReadyError,
    PayloadTooLargeError,
    UnknownMethodError,
)
from gradstore.service.errors import (
    DatasetIntegrityError,
    DatastoreIntegrityError,
    ServiceUnavailableError,
)
from gradstore.service.problem_types import MEDIA_TYPE, TYPES, Problem, problem_responses

log = logging.getLogger("gradstore.api")


# most specific first: the first class in an exception's MRO that is listed names its type
_BY_CLASS: dict[type, str] = {
    ForbiddenPathError: "path-outside-model-roots",
    DatastoreIntegrityError: "datastore-integrity",
    ManifestMismatchError: "datastore-integrity",
    DatasetIntegrityError: "dataset-integrity",
    ServiceUnavailableError: "service-unavailable",
    UnknownMethodError: "unknown-method",
    InvalidExampleError: "invalid-example",
    InvalidInputError: "invalid-input",
    NotReadyError: "datastore-not-ready",
    ConflictError: "conflict",
    NotFoundError: "not-found",
    PayloadTooLargeError: "payload-too-large",
}
_BY_HTTP_STATUS = {
    400: "malformed-body",
    401: "unauthorized",
    404: "not-found",
    405: "method-not-allowed",
    413: "payload-too-large",
}
# SQLAlchemy errors that mean "the database is not there (or busy)", not "the query is wrong"
DATABASE_DOWN = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,
)


def problem(
    status: int,
    title: str,
    detail: str,
    instance: str | None = None,
    slug: str | None = None,
    headers: dict[str, str] | None = None,
    **extra,
) -> JSONResponse:
    kind = TYPES.get(slug or "") if slug else None
    body = {
        "type": kind.uri if kind else "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    if (request_id := current("request_id")) is not None:
        body["request_id"] = request_id
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def slug_of(exc: GradstoreError) -> str:
    for cls in type(exc).__mro__:
        if cls in _BY_CLASS:
            return _BY_CLASS[cls]
    return "internal"


def describe_validation_errors(errors: Sequence[Mapping[str, Any]]) -> str:
    """``a.b: message; c: message`` without pydantic's "Value error, " prefixes."""
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg'].removeprefix('Value error, ')}"
        for e in errors
    )


def internal_error_response(path: str) -> JSONResponse:
    """The only thing a caller learns of a fault of ours: that it happened, and its id."""
    request_id = current("request_id")
    return problem(
        500,
        "Internal error",
        f"an unexpected error; the operator can find it in the logs by request id {request_id}",
        path,
        slug="internal",
    )


def install(app: FastAPI) -> None:
    @app.exception_handler(GradstoreError)
    async def _gradstore(request: Request, exc: GradstoreError):
        if exc.status >= 500:
            log.error("%s: %s", type(exc).__name__, exc.detail)
        headers = None
        if isinstance(exc, ServiceUnavailableError):
            headers = {"Retry-After": str(exc.retry_after)}
        if exc.status == 500:  # a GradstoreError we did not expect to reach a caller
            return internal_error_response(request.url.path)
        return problem(exc.status, exc.title, exc.detail, request.url.path, slug_of(exc), headers)

    @app.exception_handler(RequestValidationError)
    @app.exception_handler(ValidationError)
    async def _validation(request: Request, exc: RequestValidationError | ValidationError):
        errors = [
            {
                "loc": list(e["loc"]),
                "msg": e["msg"].removeprefix("Value error, "),
                "type": e["type"],
            }
            for e in exc.errors()
        ]
        detail = describe_validation_errors(errors)
        return problem(
            422, "Invalid request", detail, request.url.path, "invalid-request", errors=errors
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        slug = _BY_HTTP_STATUS.get(exc.status_code)
        title = TYPES[slug].title if slug else "HTTP error"
        response = problem(exc.status_code, title, str(exc.detail), request.url.path, slug)
        if exc.headers:
            response.headers.update(exc.headers)
        if exc.status_code == 405:  # every method of the path, not just its first route's
            response.headers["Allow"] = ", ".join(_allowed_methods(request))
        return response

    for error in DATABASE_DOWN:

        @app.exception_handler(error)
        async def _database_down(request: Request, exc: Exception):
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            log.warning("database unavailable: %s: %s", type(exc).__name__, first_line[:300])
            retry = str(request.app.state.settings.retry_after_seconds)
            return problem(
                503,
                "Database unavailable",
                "the database cannot be reached or is busy; retry later",
                request.url.path,
                "database-unavailable",
                {"Retry-After": retry},
            )


def _allowed_methods(request: Request) -> list[str]:
    """The methods the API documents for this path (its OpenAPI path item's keys)."""
    app = request.app
    templates = getattr(app.state, "path_methods", None)
    if templates is None:
        templates = [
            (re.compile("^" + re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(path)) + "$"), item)
            for path, item in app.openapi()["paths"].items()
        ]
        app.state.path_methods = templates
    for pattern, item in templates:
        if pattern.match(request.url.path):
            return sorted(method.upper() for method in item)
    return []


__all__ = ["MEDIA_TYPE", "TYPES", "Problem", "install", "problem", "problem_responses"]
