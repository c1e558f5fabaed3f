"""The problem types of the API: one per error class, each served at its own ``type`` URI.

A problem's ``type`` is ``/problems/<slug>``, a reference the service resolves itself, so
a caller (or an operator reading a log) can always look up what it means.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from fastapi import APIRouter
from pydantic import BaseModel, Field

from gradstore.errors import NotFoundError

MEDIA_TYPE = "application/problem+json"


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


@router.get(
    "/problems/{slug}",
    response_model=ProblemTypePublic,
    responses=problem_responses(404),
)
def get_problem_type(slug: str) -> dict:
    kind = TYPES.get(slug)
    if kind is None:
        raise NotFoundError("no such problem type")
    return asdict(kind) | {"type": kind.uri}
