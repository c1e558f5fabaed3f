"""Typed Python client for the gradstore HTTP API v1 (docs/api.md).

It depends only on httpx, pydantic and tqdm, so a notebook or a training script can talk
to a remote service without torch. Requests and responses are the service's own models
(``gradstore.api_models``), so a build request is checked here exactly as the server checks
it, and response models allow extra fields: a newer server may add fields without breaking
an older client.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from gradstore import __version__
from gradstore.api_models import (
    FAILED_BUILD,
    CheckpointPublic,
    DatasetPage,
    DatasetPublic,
    DatastoreCreate,
    DatastorePage,
    DatastorePublic,
    DatastoreStatus,
    ExampleRecord,
    HealthStatus,
    Progress,
    SelectedPublic,
    SelectResponse,
)
from gradstore.config import BuildConfig

__all__ = [
    "Checkpoint",
    "Dataset",
    "DatasetPage",
    "Datastore",
    "DatastoreBuildError",
    "DatastorePage",
    "ExampleRecord",
    "GradstoreAPIError",
    "GradstoreClient",
    "GradstoreClientError",
    "GradstoreConnectionError",
    "HealthStatus",
    "Progress",
    "Selected",
    "Selection",
]

# The response models are the service's own (gradstore.api_models); these names are the
# client's public vocabulary.
Dataset = DatasetPublic
Datastore = DatastorePublic
Selection = SelectResponse
Selected = SelectedPublic
Checkpoint = CheckpointPublic
TERMINAL_FAILURES = frozenset(FAILED_BUILD)


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


class GradstoreConnectionError(GradstoreClientError):
    """The service could not be reached (refused, unknown host, timed out)."""

    def __init__(self, base_url: str, reason: str):
        super().__init__(
            f"cannot reach the gradstore service at {base_url} ({reason}); start one with "
            "gradstore serve, or point --server (GRADSTORE_SERVER) at a running one"
        )
        self.base_url = base_url


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
    """A target goes as a dataset example does: its known fields and its metadata."""
    return {k: v for k, v in _example_record(target).items() if v is not None}


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
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise GradstoreConnectionError(str(self._http.base_url).rstrip("/"), reason) from exc
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
        config: BuildConfig | Mapping[str, Any] | None = None,
        *,
        lora: Mapping[str, Any] | BaseModel | None = None,
        warmup: Mapping[str, Any] | BaseModel | None = None,
        projection: Mapping[str, Any] | BaseModel | None = None,
        max_seq_len: int | None = None,
        warmup_from: Sequence[str | Path] | None = None,
        **settings: Any,
    ) -> Datastore:
        """Queue a build. ``config`` (a ``BuildConfig`` or its fields as a mapping) and the
        keyword arguments are the fields of the build configuration (``lora``, ``warmup``,
        ``projection``, ``max_seq_len``, ``batch_size``, ``shard_size``, ...); a keyword
        replaces the same field of ``config``. Omitted fields take the defaults that
        ``gradstore build`` uses. An invalid request raises ``ValueError`` before any call.
        """
        fields: dict[str, Any] = dict(_as_json(config) or {})
        for key, value in (("lora", lora), ("warmup", warmup), ("projection", projection)):
            if value is not None:
                fields[key] = _as_json(value)
        if max_seq_len is not None:
            fields["max_seq_len"] = max_seq_len
        fields |= {k: _as_json(v) if isinstance(v, BaseModel) else v for k, v in settings.items()}
        body = {"dataset_id": dataset_id, "model": {"path": str(model_path)}, **fields}
        if warmup_from:
            body["warmup_from"] = [str(d) for d in warmup_from]
        try:
            request = DatastoreCreate.model_validate(body)
        except ValidationError as exc:
            raise ValueError(f"invalid build request: {exc}") from None
        payload = request.model_dump(mode="json", exclude_unset=True, exclude={"options"})
        return Datastore.model_validate(
            self._request("POST", "/v1/datastores", json=payload).json()
        )

    def report(self, datastore_id: str, selection_id: str) -> str:
        """The HTML report of a selection (its ``selection_id`` is in the select answer)."""
        path = f"/v1/datastores/{_segment(datastore_id)}/selections/{_segment(selection_id)}"
        return self._request("GET", f"{path}/report").text

    def add_methods(self, datastore_id: str, methods: Sequence[str]) -> Datastore:
        """Make a ready datastore serve more methods (their artifacts are computed by the
        workers; ``pending_methods`` lists them until they answer)."""
        path = f"/v1/datastores/{_segment(datastore_id)}/methods"
        response = self._request("POST", path, json={"methods": list(methods)})
        return Datastore.model_validate(response.json())

    def wait_until_methods(
        self, datastore_id: str, timeout: float | None = None, poll: float = 1.0
    ) -> Datastore:
        """Poll until no method is pending on the datastore."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            store = self.get_datastore(datastore_id)
            if not store.pending_methods:
                return store
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"methods {store.pending_methods} still pending")
            time.sleep(poll)

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
        explain: bool = False,
    ) -> Selection:
        """Rank the pool for the targets (each with a ``subtask``); best first."""
        body: dict[str, Any] = {"targets": [_target_record(t) for t in targets], "method": method}
        if explain:
            body["explain"] = True
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
        # the rate is the service's, not tqdm's: the bar's count jumps between polls
        bar_format = "{desc}{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"
        bar = tqdm(
            total=0, disable=not progress, unit="ex", desc=datastore_id[:12], bar_format=bar_format
        )
        stage = None
        try:
            while True:
                store = self.get_datastore(datastore_id)
                if store.status != stage:
                    stage = store.status
                    bar.reset(total=store.progress.total)
                    bar.set_description(f"{datastore_id[:12]} {stage}", refresh=False)
                bar.total = store.progress.total
                bar.n = store.progress.done
                rate = store.progress.examples_per_s
                ongoing = store.status not in (DatastoreStatus.READY, *TERMINAL_FAILURES)
                bar.set_postfix_str(f", {rate:.1f} ex/s" if rate and ongoing else "", refresh=False)
                if store.status == DatastoreStatus.READY:
                    bar.n = bar.total
                bar.refresh()
                if store.status == DatastoreStatus.READY:
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
