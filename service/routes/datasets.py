"""Datasets: immutable, content-addressed JSONL pools."""

from __future__ import annotations

import io
import json

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import func, select

from gradstore.api_models import DatasetCreate, DatasetPage, DatasetPublic, ExampleRecord
from gradstore.db.models import Dataset
from gradstore.errors import InvalidInputError, NotFoundError, PayloadTooLargeError
from gradstore.examples import load_examples, parse_jsonl_lines
from gradstore.files import atomic_write_bytes, sha256_bytes
from gradstore.service.deps import SessionDep, SettingsDep
from gradstore.service.example_index import read_example
from gradstore.service.problems import problem_responses

router = APIRouter(
    prefix="/v1/datasets", tags=["datasets"], responses=problem_responses(401, 404, 413, 422)
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


@router.post("", status_code=201, response_model=DatasetPublic, openapi_extra=_UPLOAD_DOC)
async def create_dataset(request: Request, session: SessionDep, settings: SettingsDep):
    """Register a pool: multipart ``file`` (JSONL) + ``name``, or JSON ``{name, examples}``."""
    limit = settings.max_upload_bytes
    declared = int(request.headers.get("content-length") or 0)
    if declared > limit:
        raise PayloadTooLargeError(f"upload of {declared} bytes exceeds the limit of {limit}")
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_part_size=limit)
        name, upload = form.get("name"), form.get("file")
        if not isinstance(name, str) or not name.strip():
            raise InvalidInputError("multipart upload needs a non-empty 'name' field")
        if upload is None or isinstance(upload, str):
            raise InvalidInputError("multipart upload needs a 'file' part with JSONL")
        if upload.size is not None and upload.size > limit:  # chunked: no content-length
            raise PayloadTooLargeError(f"file of {upload.size} bytes exceeds the limit of {limit}")
        data, count = await run_in_threadpool(_validated_jsonl, await upload.read())
    elif content_type.startswith("application/json"):
        try:
            payload = json.loads(await _read_limited(request, limit))
        except ValueError:
            raise InvalidInputError("the body is not valid JSON") from None
        body = DatasetCreate.model_validate(payload)
        if len(body.examples) > settings.max_inline_examples:
            raise PayloadTooLargeError(
                f"{len(body.examples)} inline examples; at most {settings.max_inline_examples}"
            )
        name = body.name
        data, count = await run_in_threadpool(_jsonl_from_records, body.examples)
    else:
        raise InvalidInputError("send multipart/form-data (file, name) or application/json")
    return await run_in_threadpool(_store, session, settings, name.strip(), data, count)


def _store(session, settings, name: str, data: bytes, count: int) -> Dataset:
    """Write the bytes once under their hash (immutable), then record the dataset."""
    digest = sha256_bytes(data)
    path = (settings.datasets_dir / f"{digest}.jsonl").resolve()
    if not path.exists():
        atomic_write_bytes(path, data)
    dataset = Dataset(name=name, num_examples=count, sha256=digest, path=str(path))
    session.add(dataset)
    session.commit()
    return dataset


@router.get("", response_model=DatasetPage)
def list_datasets(
    session: SessionDep,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0),
):
    rows = session.scalars(
        select(Dataset).order_by(Dataset.created_at, Dataset.id).offset(offset).limit(limit)
    ).all()
    return {"data": rows, "count": session.scalar(select(func.count()).select_from(Dataset))}


def get_dataset_or_404(session, dataset_id: str) -> Dataset:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise NotFoundError(f"no dataset with id {dataset_id!r}")
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
    """The stored example as it was uploaded (normalised to its JSON record)."""
    dataset = get_dataset_or_404(session, dataset_id)
    record = read_example(dataset.path, example_id)
    if record is None:
        raise NotFoundError(f"dataset {dataset_id!r} has no example with id {example_id!r}")
    return record
