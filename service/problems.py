"""Every error as application/problem+json (RFC 9457), from one family of exceptions."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from gradstore.errors import GradstoreError

MEDIA_TYPE = "application/problem+json"


class Problem(BaseModel):
    """RFC 9457 problem details, the body of every error."""

    type: str = "about:blank"
    title: str = Field(examples=["Datastore not ready"])
    status: int = Field(examples=[409])
    detail: str = Field(examples=["datastore 3f2c… is featurize, not ready"])
    instance: str | None = Field(None, examples=["/v1/datastores/3f2c…/select"])


_MEANINGS = {
    401: "API key missing or wrong",
    404: "No such resource",
    409: "The resource is not in a state that allows this (e.g. not ready)",
    413: "Upload or request too large",
    422: "Invalid request, example or option (the detail names it)",
}


def problem_responses(*codes: int) -> dict[int | str, dict]:
    """OpenAPI entries for routes' error answers, documented as problem+json."""
    schema = Problem.model_json_schema()
    return {
        code: {"description": _MEANINGS[code], "content": {MEDIA_TYPE: {"schema": schema}}}
        for code in codes
    }


def problem(status: int, title: str, detail: str, instance: str | None = None, **extra):
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if instance:
        body["instance"] = instance
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE)


def install(app: FastAPI) -> None:
    @app.exception_handler(GradstoreError)
    async def _gradstore(request: Request, exc: GradstoreError):
        return problem(exc.status, exc.title, exc.detail, request.url.path)

    @app.exception_handler(RequestValidationError)
    @app.exception_handler(ValidationError)
    async def _validation(request: Request, exc: RequestValidationError | ValidationError):
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        return problem(422, "Invalid request", detail, request.url.path, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        title = {401: "Unauthorized", 404: "Not found", 405: "Method not allowed"}.get(
            exc.status_code, "HTTP error"
        )
        response = problem(exc.status_code, title, str(exc.detail), request.url.path)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        return problem(500, "Internal error", f"{type(exc).__name__}: {exc}", request.url.path)
