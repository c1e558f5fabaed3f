"""Typed Python client for the gradstore HTTP API v1 (DESIGN.md §2).

It depends only on httpx, pydantic and tqdm, so a notebook or a training script can talk
to a remote service without torch. Response models allow extra fields: a newer server may
add fields without breaking an older client.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict

from gradstore import __version__

TERMINAL_FAILURES = frozenset({"failed", "cancelled"})
_TARGET_FIELDS = {"id", "subtask", "messages", "prompt", "completion"}


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow")


class Dataset(_Response):
    id: str
    name: str
    num_examples: int
    sha256: str
    created_at: datetime


class DatasetPage(_Response):
    data: list[Dataset]
    count: int


class ExampleRecord(_Response):
    """A stored example: ``messages`` or ``prompt`` + ``completion``, plus its extra fields."""

    id: str
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    completion: str | None = None
    subtask: str | None = None


class Progress(_Response):
    stage: str
    done: int
    total: int
    examples_per_s: float | None = None
    eta_s: float | None = None


class Checkpoint(_Response):
    index: int
    learning_rate: float


class Datastore(_Response):
    id: str
    status: str
    progress: Progress
    checkpoints: list[Checkpoint] = []
    num_examples: int | None = None
    dim: int | None = None
    error: str | None = None
    dataset_id: str | None = None
    skipped: list[dict[str, Any]] = []
    warnings: list[str] = []  # what will work, but probably not as meant, and what to change
    verified_at: datetime | None = None
    verifying: bool = False
    created_at: datetime | None = None


class DatastorePage(_Response):
    data: list[Datastore]
    count: int


class Selected(_Response):
    id: str
    score: float
    subtask: str


class Selection(_Response):
    datastore_id: str
    method: str
    selected: list[Selected]
    num_candidates: int
    timings_ms: dict[str, float] = {}


class HealthStatus(_Response):
    status: str


class GradstoreClientError(Exception):
    """Base class of the errors this client raises itself."""


class GradstoreAPIError(GradstoreClientError):
    """A non-2xx answer, parsed from application/problem+json (RFC 9457) when it is one."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        type: str = "about:blank",
        body: Any = None,
    ):
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type
        self.body = body

    @classmethod
    def from_response(cls, response: httpx.Response) -> GradstoreAPIError:
        """Problem fields when the body has them, else the status line and the text body."""
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        title = response.reason_phrase or "HTTP error"
        if isinstance(body, dict) and ("detail" in body or "title" in body):
            detail = body.get("detail")
            return cls(
                status=int(body.get("status") or response.status_code),
                title=str(body.get("title") or title),
                detail=detail if isinstance(detail, str) else json.dumps(detail),
                type=str(body.get("type") or "about:blank"),
                body=body,
            )
        return cls(response.status_code, title, response.text.strip(), body=body)


class DatastoreBuildError(GradstoreClientError):
    """The build ended as ``failed`` or ``cancelled``; ``datastore`` is its last record."""

    def __init__(self, datastore: Datastore):
        reason = f": {datastore.error}" if datastore.error else ""
        super().__init__(f"datastore {datastore.id} is {datastore.status}{reason}")
        self.datastore = datastore


def _as_json(value: Mapping[str, Any] | BaseModel | None) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return dict(value)


def _example_record(example: Any) -> dict[str, Any]:
    if isinstance(example, Mapping):
        return dict(example)
    if hasattr(example, "to_record"):  # gradstore.examples.Example keeps its extra fields
        return example.to_record()
    if isinstance(example, BaseModel):
        return example.model_dump(mode="json", exclude_none=True)
    raise TypeError(f"an example must be a mapping or a pydantic model, not {type(example)}")


def _target_record(target: Any) -> dict[str, Any]:
    """Mappings go as given; model objects keep only the fields a target may have."""
    if isinstance(target, Mapping):
        return dict(target)
    record = _example_record(target)
    return {k: v for k, v in record.items() if k in _TARGET_FIELDS and v is not None}


def _segment(identifier: str) -> str:
    return quote(str(identifier), safe="")


class GradstoreClient:
    """A synchronous client; use it as a context manager so the connection pool is closed.

    ``transport`` replaces the network (an ``httpx.MockTransport`` or ``WSGITransport``).
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout: float | httpx.Timeout = 60.0,
        transport: httpx.BaseTransport | None = None,
    ):
        headers = {"Accept": "application/json", "User-Agent": f"gradstore-client/{__version__}"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(
            base_url=base_url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GradstoreClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._http.request(method, path, **kwargs)
        if response.is_error:
            raise GradstoreAPIError.from_response(response)
        return response

    # datasets

    def create_dataset(
        self,
        name: str,
        examples: Iterable[Mapping[str, Any] | BaseModel] | None = None,
        path: str | Path | None = None,
    ) -> Dataset:
        """Register a pool: inline ``examples`` (JSON) or a JSONL file at ``path`` (multipart)."""
        if (examples is None) == (path is None):
            raise ValueError("give exactly one of 'examples' or 'path'")
        if path is not None:
            path = Path(path)
            with path.open("rb") as handle:
                response = self._request(
                    "POST",
                    "/v1/datasets",
                    data={"name": name},
                    files={"file": (path.name, handle, "application/x-ndjson")},
                )
        else:
            records = [_example_record(e) for e in examples]  # type: ignore[union-attr]
            response = self._request(
                "POST", "/v1/datasets", json={"name": name, "examples": records}
            )
        return Dataset.model_validate(response.json())

    def list_datasets(self, limit: int = 100, offset: int = 0) -> DatasetPage:
        response = self._request("GET", "/v1/datasets", params={"limit": limit, "offset": offset})
        return DatasetPage.model_validate(response.json())

    def get_dataset(self, dataset_id: str) -> Dataset:
        response = self._request("GET", f"/v1/datasets/{_segment(dataset_id)}")
        return Dataset.model_validate(response.json())

    def get_example(self, dataset_id: str, example_id: str) -> ExampleRecord:
        path = f"/v1/datasets/{_segment(dataset_id)}/examples/{_segment(example_id)}"
        return ExampleRecord.model_validate(self._request("GET", path).json())

    # datastores

    def create_datastore(
        self,
        dataset_id: str,
        model_path: str | Path,
        lora: Mapping[str, Any] | BaseModel | None = None,
        warmup: Mapping[str, Any] | BaseModel | None = None,
        projection: Mapping[str, Any] | BaseModel | None = None,
        max_seq_len: int | None = None,
        warmup_from: Sequence[str | Path] | None = None,
        **options: Any,
    ) -> Datastore:
        """Queue a build. Omitted settings take the server's LESS defaults; ``options`` are
        the other build settings (``batch_size``, ``shard_size``, ``dtype``, ...)."""
        body: dict[str, Any] = {"dataset_id": dataset_id, "model": {"path": str(model_path)}}
        for key, value in (("lora", lora), ("warmup", warmup), ("projection", projection)):
            if value is not None:
                body[key] = _as_json(value)
        if max_seq_len is not None:
            body["max_seq_len"] = max_seq_len
        if warmup_from:
            body["warmup_from"] = [str(d) for d in warmup_from]
        if options:
            body["options"] = options
        return Datastore.model_validate(self._request("POST", "/v1/datastores", json=body).json())

    def list_datastores(self, limit: int = 100, offset: int = 0) -> DatastorePage:
        params = {"limit": limit, "offset": offset}
        response = self._request("GET", "/v1/datastores", params=params)
        return DatastorePage.model_validate(response.json())

    def get_datastore(self, datastore_id: str) -> Datastore:
        response = self._request("GET", f"/v1/datastores/{_segment(datastore_id)}")
        return Datastore.model_validate(response.json())

    def delete_datastore(self, datastore_id: str) -> None:
        """Remove a datastore and its artifacts (a build in progress is cancelled)."""
        self._request("DELETE", f"/v1/datastores/{_segment(datastore_id)}")

    def verify_datastore(self, datastore_id: str) -> Datastore:
        """Queue a full checksum verification of the store's files by a worker."""
        path = f"/v1/datastores/{_segment(datastore_id)}/verify"
        return Datastore.model_validate(self._request("POST", path).json())

    def select(
        self,
        datastore_id: str,
        targets: Iterable[Mapping[str, Any] | BaseModel],
        method: str = "less",
        top_k: int | None = None,
        fraction: float | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> Selection:
        """Rank the pool for the targets (each with a ``subtask``); best first."""
        body: dict[str, Any] = {"targets": [_target_record(t) for t in targets], "method": method}
        if top_k is not None:
            body["top_k"] = top_k
        if fraction is not None:
            body["fraction"] = fraction
        if options:
            body["options"] = dict(options)
        path = f"/v1/datastores/{_segment(datastore_id)}/select"
        return Selection.model_validate(self._request("POST", path, json=body).json())

    # operations

    def health(self) -> HealthStatus:
        """Liveness: the process answers."""
        return HealthStatus.model_validate(self._request("GET", "/healthz").json())

    def ready(self) -> HealthStatus:
        """Readiness; raises ``GradstoreAPIError`` (503) when the database or disk is not."""
        return HealthStatus.model_validate(self._request("GET", "/readyz").json())

    def wait_until_ready(
        self,
        datastore_id: str,
        timeout: float | None = None,
        poll_interval: float = 2.0,
        progress: bool = True,
    ) -> Datastore:
        """Poll until the build is ``ready``, showing done/total of the current stage.

        Raises ``DatastoreBuildError`` when it fails or is cancelled, ``TimeoutError`` when
        ``timeout`` seconds pass first.
        """
        from tqdm.auto import tqdm

        deadline = None if timeout is None else time.monotonic() + timeout
        bar = tqdm(total=0, disable=not progress, unit="ex", desc=datastore_id[:12])
        stage = None
        try:
            while True:
                store = self.get_datastore(datastore_id)
                if store.progress.stage != stage:
                    stage = store.progress.stage
                    bar.reset(total=store.progress.total)
                    bar.set_description(f"{datastore_id[:12]} {stage}")
                bar.total = store.progress.total
                bar.n = store.progress.done
                if store.progress.examples_per_s:
                    bar.set_postfix(ex_per_s=f"{store.progress.examples_per_s:.1f}", refresh=False)
                bar.refresh()
                if store.status == "ready":
                    return store
                if store.status in TERMINAL_FAILURES:
                    raise DatastoreBuildError(store)
                wait = poll_interval
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(
                            f"datastore {datastore_id} still {store.status} after {timeout} s"
                        )
                    wait = min(wait, left)
                time.sleep(wait)
        finally:
            bar.close()
