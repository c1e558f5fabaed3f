"""Every error as application/problem+json (RFC 9457), one documented type per error class.

A problem's ``type`` is ``/problems/<slug>``, a reference the service resolves itself
(``GET /problems/<slug>`` explains it); every body carries the ``request_id`` that finds
its log lines. A 500 says nothing but that id: its exception, with any SQL, path or host in
it, goes to the log only. An unreachable database is a 503 with ``Retry-After``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

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
from service.errors import (
    DatasetIntegrityError,
    DatastoreIntegrityError,
    ForbiddenPathError,
    ServiceUnavailableError,
)
from service.logs import current

MEDIA_TYPE = "application/problem+json"
log = logging.getLogger("gradstore.api")


@dataclass(frozen=True)
class ProblemType:
    slug: str
    status: int
    title: str
    description: str

    @property
    def uri(self) -> str:
        return f"/problems/{self.slug}"


_TYPES = [
    ProblemType(
        "invalid-request",
        422,
        "Invalid request",
        "The body, a path or a query parameter does not match the API schema; "
        "`errors` lists each field with its problem.",
    ),
    ProblemType(
        "invalid-input",
        422,
        "Invalid input",
        "The request is well formed but cannot be used: a model directory that is "
        "not one, options a build does not take, a budget out of range, text that "
        "is not valid Unicode.",
    ),
    ProblemType(
        "invalid-example",
        422,
        "Invalid example",
        "An example (a JSONL line or an inline record) is malformed; the detail "
        "names its line and the problem.",
    ),
    ProblemType(
        "unknown-method",
        422,
        "Unknown selection method",
        "The selection method is not one this service has.",
    ),
    ProblemType(
        "malformed-body",
        400,
        "Malformed body",
        "The body could not be parsed at all (broken JSON or multipart framing).",
    ),
    ProblemType(
        "unauthorized",
        401,
        "Unauthorized",
        "An API key is required: send `Authorization: Bearer <key>`.",
    ),
    ProblemType(
        "path-outside-model-roots",
        403,
        "Path outside the model roots",
        "`model.path` and `warmup_from` must resolve (symlinks followed) inside one "
        "of GRADSTORE_MODEL_ROOTS. Nothing is said about paths outside them.",
    ),
    ProblemType("not-found", 404, "Not found", "No such resource (or route)."),
    ProblemType(
        "method-not-allowed",
        405,
        "Method not allowed",
        "The route exists but not with this method.",
    ),
    ProblemType(
        "datastore-not-ready",
        409,
        "Datastore not ready",
        "The datastore is still building, failed or was cancelled; its status and error say which.",
    ),
    ProblemType(
        "datastore-integrity",
        409,
        "Datastore integrity check failed",
        "A file of the datastore changed on disk after it was verified. The store is "
        "marked failed with the reason and never answers from those files; rebuild "
        "it, or restore its files and ask `POST /v1/datastores/{id}/verify`.",
    ),
    ProblemType(
        "dataset-integrity",
        409,
        "Dataset integrity check failed",
        "The dataset's stored file no longer matches the sha256 recorded at upload.",
    ),
    ProblemType(
        "conflict", 409, "Conflict", "The resource is in a state that forbids the request."
    ),
    ProblemType(
        "payload-too-large",
        413,
        "Payload too large",
        "The upload, the inline examples or the targets exceed the configured limit.",
    ),
    ProblemType(
        "database-unavailable",
        503,
        "Database unavailable",
        "The database cannot be reached or is busy; retry after `Retry-After` seconds.",
    ),
    ProblemType(
        "service-unavailable",
        503,
        "Service unavailable",
        "A dependency (artifact root, a datastore's model directory) cannot be used "
        "right now; retry after `Retry-After` seconds.",
    ),
    ProblemType(
        "internal",
        500,
        "Internal error",
        "A fault of the service itself. The body carries only the request id; the "
        "operator finds the cause in the logs by that id.",
    ),
]
TYPES = {t.slug: t for t in _TYPES}

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


class Problem(BaseModel):
    """RFC 9457 problem details, the body of every error."""

    type: str = Field(examples=["/problems/datastore-not-ready"])
    title: str = Field(examples=["Datastore not ready"])
    status: int = Field(examples=[409])
    detail: str = Field(examples=["datastore 3f2c… is featurize, not ready"])
    instance: str | None = Field(None, examples=["/v1/datastores/3f2c…/select"])
    request_id: str | None = Field(None, description="Finds this request in the logs.")


_MEANINGS = {
    400: "Malformed body",
    401: "API key missing or wrong",
    403: "Path outside the model roots",
    404: "No such resource",
    409: "The resource is not in a state that allows this (e.g. not ready, failed integrity)",
    413: "Upload or request too large",
    422: "Invalid request, example or option (the detail names it)",
    503: "A dependency is unavailable; retry after Retry-After seconds",
}


def problem_responses(*codes: int) -> dict[int | str, dict]:
    """OpenAPI entries for routes' error answers, documented as problem+json."""
    schema = Problem.model_json_schema()
    return {
        code: {"description": _MEANINGS[code], "content": {MEDIA_TYPE: {"schema": schema}}}
        for code in codes
    }


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


def describe_validation_errors(errors: list[dict]) -> str:
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


router = APIRouter(tags=["problems"])


class ProblemTypePublic(BaseModel):
    type: str
    slug: str
    status: int
    title: str
    description: str


@router.get("/problems", response_model=list[ProblemTypePublic])
def list_problem_types() -> list[dict]:
    """Every problem ``type`` this service answers with, and what it means."""
    return [asdict(t) | {"type": t.uri} for t in _TYPES]


@router.get("/problems/{slug}", response_model=ProblemTypePublic, responses=problem_responses(404))
def get_problem_type(slug: str) -> dict:
    kind = TYPES.get(slug)
    if kind is None:
        raise NotFoundError("no such problem type")
    return asdict(kind) | {"type": kind.uri}
