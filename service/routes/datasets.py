"""Datasets: immutable, content-addressed JSONL pools."""

from __future__ import annotations

import errno
import io
import json
import logging
import re
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool

from gradstore.api_models import (
    DatasetCreate,
    DatasetPage,
    DatasetPublic,
    ExampleRecord,
    dataset_name,
)
from gradstore.db import records
from gradstore.db.logs import bind
from gradstore.db.models import Dataset
from gradstore.errors import InvalidInputError, NotFoundError, PayloadTooLargeError
from gradstore.examples import load_examples, parse_jsonl_lines
from gradstore.files import atomic_write_bytes, sha256_bytes, sha256_file
from gradstore.service.deps import SessionDep, SettingsDep
from gradstore.service.errors import ServiceUnavailableError
from gradstore.service.example_index import read_example
from gradstore.service.problems import problem_responses

# Page parameters, bounded so that no integer reaches the database unrepresentable
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=2**31 - 1)]
_ID = re.compile(r"[0-9a-f]{32}")
log = logging.getLogger("gradstore.api")

router = APIRouter(
    prefix="/v1/datasets",
    tags=["datasets"],
    responses=problem_responses(400, 401, 404, 409, 413, 422, 503),
)

_UPLOAD_DOC = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "name"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "name": {"type": "string"},
                    },
                }
            },
            "application/json": {"schema": DatasetCreate.model_json_schema()},
        },
        "required": True,
    }
}


def _validated_jsonl(data: bytes) -> tuple[bytes, int]:
    data = data.removeprefix(b"\xef\xbb\xbf")  # a byte-order mark is accepted, not stored
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInputError("the file is not UTF-8 text") from None
    # split exactly as read_jsonl (which the workers use) does: universal newlines only
    examples = list(parse_jsonl_lines(io.StringIO(text, newline=None)))
    if not examples:
        raise InvalidInputError("the dataset has no examples")
    load_examples([e.to_record() for e in examples])  # unique IDs
    return data, len(examples)


def _jsonl_from_records(records: list[dict]) -> tuple[bytes, int]:
    examples = load_examples(records)
    lines = [json.dumps(e.to_record(), ensure_ascii=False, sort_keys=True) for e in examples]
    return ("\n".join(lines) + "\n").encode(), len(examples)


async def _read_limited(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it passes ``limit`` (a chunked body declares no length)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"the body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _declared_length(request: Request) -> int:
    try:
        return max(0, int(request.headers.get("content-length") or 0))
    except ValueError:
        raise InvalidInputError("the Content-Length header is not a number") from None


def _parse_json(data: bytes):
    try:
        return json.loads(data)
    except RecursionError:
        raise InvalidInputError("the body is nested too deeply") from None
    except ValueError:  # not JSON, not UTF-8, or an integer of more than 4300 digits
        raise InvalidInputError("the body is not valid JSON") from None


@router.post("", status_code=201, response_model=DatasetPublic, openapi_extra=_UPLOAD_DOC)
async def create_dataset(request: Request, session: SessionDep, settings: SettingsDep):
    """Register a pool: multipart ``file`` (JSONL) + ``name``, or JSON ``{name, examples}``."""
    limit = settings.max_upload_bytes
    declared = _declared_length(request)
    if declared > limit:
        raise PayloadTooLargeError(f"upload of {declared} bytes exceeds the limit of {limit}")
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_part_size=limit)
        name, upload = form.get("name"), form.get("file")
        if not isinstance(name, str):
            raise InvalidInputError("multipart upload needs a non-empty 'name' field")
        try:
            name = dataset_name(name)
        except ValueError as exc:
            raise InvalidInputError(f"name: {exc}") from None
        if upload is None or isinstance(upload, str):
            raise InvalidInputError("multipart upload needs a 'file' part with JSONL")
        if upload.size is not None and upload.size > limit:  # chunked: no content-length
            raise PayloadTooLargeError(f"file of {upload.size} bytes exceeds the limit of {limit}")
        data, count = await run_in_threadpool(_validated_jsonl, await upload.read())
    elif content_type.startswith("application/json"):
        payload = _parse_json(await _read_limited(request, limit))
        body = DatasetCreate.model_validate(payload)
        if len(body.examples) > settings.max_inline_examples:
            raise PayloadTooLargeError(
                f"{len(body.examples)} inline examples; at most {settings.max_inline_examples}"
            )
        name = body.name
        data, count = await run_in_threadpool(_jsonl_from_records, body.examples)
    else:
        raise InvalidInputError("send multipart/form-data (file, name) or application/json")
    return await run_in_threadpool(_store, session, settings, name, data, count)


def _store(session, settings, name: str, data: bytes, count: int) -> Dataset:
    """Record the dataset, write its bytes once under their hash (immutable), commit.

    The row is inserted (flushed) before any file is written, so a database that refuses
    it (down, or a value it cannot store) leaves no file behind. A file already there under
    that hash is used only if its bytes still hash to it (a damaged one is replaced); one
    this upload wrote is removed again if the commit fails.
    """
    digest = sha256_bytes(data)
    path = (settings.datasets_dir / f"{digest}.jsonl").resolve()
    dataset = Dataset(name=name, num_examples=count, sha256=digest, path=str(path))
    session.add(dataset)
    session.flush()
    wrote = False
    try:
        try:
            if not path.exists() or sha256_file(path) != digest:
                atomic_write_bytes(path, data)
                wrote = True
        except OSError as exc:
            log.error("dataset file could not be written: %s", exc)
            raise ServiceUnavailableError(
                "the artifact root cannot be written "
                f"({errno.errorcode.get(exc.errno or 0, 'error')})",
                settings.retry_after_seconds,
            ) from None
        session.commit()
    except BaseException:
        session.rollback()
        if wrote:
            _remove_if_unused(session, path, digest)
        raise
    log.info("dataset stored", extra={"dataset_id": dataset.id, "examples": count})
    return dataset


def _remove_if_unused(session, path, digest: str) -> None:
    """Remove a file no dataset record names (when the database can say so)."""
    try:
        used = records.datasets_with_sha256(session, digest)
    except Exception:  # the database is down: an orphan is better than a lost dataset
        log.warning("could not check whether %s is still used; left in place", path.name)
        return
    if not used:
        path.unlink(missing_ok=True)


@router.get("", response_model=DatasetPage)
def list_datasets(session: SessionDep, limit: Limit = 100, offset: Offset = 0):
    rows = records.list_datasets(session, limit, offset)
    return {"data": rows, "count": records.count_datasets(session)}


def looks_like_id(value: str) -> bool:
    """IDs are ours (32 hex digits); anything else is not looked up (NUL, 5 KB, ...)."""
    return _ID.fullmatch(value) is not None


def get_dataset_or_404(session, dataset_id: str) -> Dataset:
    dataset = session.get(Dataset, dataset_id) if looks_like_id(dataset_id) else None
    if dataset is None:
        raise NotFoundError(f"no dataset with id {dataset_id[:80]!r}")
    bind(dataset_id=dataset.id)  # on every log line of this request from here on
    return dataset


@router.get("/{dataset_id}", response_model=DatasetPublic)
def get_dataset(dataset_id: str, session: SessionDep):
    return get_dataset_or_404(session, dataset_id)


@router.get(
    "/{dataset_id}/examples/{example_id}",
    response_model=ExampleRecord,
    response_model_exclude_unset=True,
)
def get_example(dataset_id: str, example_id: str, session: SessionDep) -> dict:
    """The stored example as it was uploaded (normalised to its JSON record).

    The dataset's file is checked against its sha256 when it is first indexed, and its
    stat before and after every read, so a changed file answers 409, never its contents.
    """
    dataset = get_dataset_or_404(session, dataset_id)
    record = read_example(dataset.path, dataset.sha256, example_id)
    if record is None:
        raise NotFoundError(f"dataset {dataset_id!r} has no example with id {example_id[:200]!r}")
    return record
