"""The bodies of API v1, shared by the service (validation, OpenAPI) and the Python client.

Torch-free (pydantic and the build configuration only), so a notebook can import the
client without the numeric stack. Response models allow extra fields: a newer server may
add fields without breaking an older client. Statuses are enums, the only place their
values are spelled (the workers' unit kinds are no word of the API: gradstore.db.units).
"""

from __future__ import annotations

import unicodedata
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from gradstore.config import BuildConfig
from gradstore.examples import Message


class DatastoreStatus(StrEnum):
    """Where a datastore build stands; ``ready``, ``failed`` and ``cancelled`` are final."""

    QUEUED = "queued"
    WARMUP = "warmup"
    FEATURIZE = "featurize"
    INDEX = "index"
    ARTIFACTS = "artifacts"  # the extra artifacts of the store's methods, in row units
    EXTEND = "extend"  # artifacts for more methods, added to a ready store
    READY = "ready"
    FAILED = "failed"
    CANCELLED = "cancelled"


# A build in one of these states is still running (or waiting for) its workers.
ACTIVE_BUILD = (
    DatastoreStatus.QUEUED,
    DatastoreStatus.WARMUP,
    DatastoreStatus.FEATURIZE,
    DatastoreStatus.INDEX,
    DatastoreStatus.ARTIFACTS,
)
FAILED_BUILD = (DatastoreStatus.FAILED, DatastoreStatus.CANCELLED)


class _Public(BaseModel):
    model_config = ConfigDict(extra="allow")


def valid_unicode(value: str) -> str:
    """JSON can spell lone UTF-16 surrogates (``"\\ud800"``); no file or database stores them."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not valid Unicode (it has a lone UTF-16 surrogate)") from None
    return value


def dataset_name(value: str) -> str:
    """Names are shown and stored as given, less surrounding whitespace: printable, 1-200."""
    value = valid_unicode(value).strip()
    if not value:
        raise ValueError("the name is empty (or only whitespace)")
    if len(value) > 200:
        raise ValueError("the name is longer than 200 characters")
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise ValueError("the name has control characters")
    return value


UnicodeStr = Annotated[str, AfterValidator(valid_unicode)]
Name = Annotated[str, AfterValidator(dataset_name)]


# datasets


class DatasetCreate(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "pool-v1",
                    "examples": [{"id": "ex-1", "prompt": "2+2=", "completion": "4"}],
                }
            ]
        }
    )
    name: Name = Field(min_length=1, max_length=1000)
    examples: list[dict[str, Any]] = Field(min_length=1)


class DatasetPublic(_Public):
    id: str
    name: str
    num_examples: int
    sha256: str
    created_at: datetime


class DatasetPage(_Public):
    data: list[DatasetPublic]
    count: int


class ExampleRecord(_Public):
    """A stored example: ``messages`` or ``prompt`` + ``completion``, plus its extra fields."""

    id: str
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    completion: str | None = None
    subtask: str | None = None


# datastores


class ModelRef(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    path: UnicodeStr = Field(
        max_length=4096,
        description="An absolute local directory that transformers can load, inside one of "
        "the service's model roots (GRADSTORE_MODEL_ROOTS).",
    )


_BUILD_FIELDS = frozenset(BuildConfig.model_fields)


class DatastoreCreate(BuildConfig):
    """A build request: the dataset, the model, and every field of ``BuildConfig``.

    The build settings are the configuration model itself (same fields, defaults and
    checks as ``gradstore build``), so one request gives one stored configuration.
    """

    model_config = ConfigDict(
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "dataset_id": "3f2c…",
                    "model": {"path": "/models/Llama-3.2-1B"},
                    "lora": {"r": 128, "alpha": 512},
                    "warmup": {"fraction": 0.05, "epochs": 4, "learning_rate": 2e-5},
                    "projection": {"dim": 8192, "seed": 0},
                    "max_seq_len": 2048,
                }
            ]
        },
    )
    dataset_id: UnicodeStr = Field(max_length=64)
    model: ModelRef | None = Field(
        None,
        description="The model; may be left out only when every method reads the text alone "
        "(bm25, dsir, random): such a store builds in seconds, without warmup or gradients.",
    )
    warmup_from: list[Annotated[UnicodeStr, Field(max_length=4096)]] = Field(
        default_factory=list,
        max_length=64,
        description="Checkpoint dirs of an existing LESS warmup to reuse (inside the model roots).",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        deprecated=True,
        description="Deprecated: the other build settings now sit at the top level. Still "
        "accepted (merged into the top level; a field given in both places is an error).",
    )

    @model_validator(mode="before")
    @classmethod
    def _merge_options(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data.get("options"):
            return data
        options = data["options"]
        if not isinstance(options, dict):
            return data  # the field's own validation reports it
        both = sorted(set(options) & set(data))
        if both:
            raise ValueError(f"{', '.join(both)} given both at the top level and in options")
        unknown = sorted(set(options) - _BUILD_FIELDS)
        if unknown:
            raise ValueError(f"options: unknown build settings {', '.join(unknown)}")
        return {**data, **options, "options": {}}

    def build_config(self) -> BuildConfig:
        """The configuration the datastore is built with (and stored with)."""
        return BuildConfig.model_validate(self.model_dump(include=set(_BUILD_FIELDS)))


class Progress(_Public):
    stage: DatastoreStatus
    done: int
    total: int
    examples_per_s: float | None = None
    eta_s: float | None = None


class CheckpointPublic(_Public):
    index: int
    learning_rate: float


class DatastorePublic(_Public):
    id: str
    dataset_id: str
    status: DatastoreStatus
    progress: Progress
    checkpoints: list[CheckpointPublic] = []
    num_examples: int | None = None
    dim: int | None = None
    error: str | None = None
    skipped: list[dict[str, str]] = []
    warnings: list[str] = Field(
        default_factory=list,
        description="What the submission checks found will work, but probably not as meant "
        "(e.g. a warmup with too few optimizer steps to move the adapter), with what to change.",
    )
    verified_at: datetime | None = Field(
        None, description="When every file last matched its sha256 (a worker checks it)."
    )
    verifying: bool = Field(False, description="A full verification is queued or running.")
    config: BuildConfig | None = Field(
        None, description="The resolved build configuration (every default filled in)."
    )
    methods: list[str] = Field(
        [], description="Selection methods whose artifacts this store holds (or will hold)."
    )
    pending_methods: list[str] = Field(
        [], description="Methods being added to a ready store (POST .../methods)."
    )
    created_at: datetime


class DatastorePage(_Public):
    data: list[DatastorePublic]
    count: int


# selection


class Target(BaseModel):
    """A target example: the shape of a dataset example (``gradstore.examples.Example``),
    so a file written for ``gradstore select`` is sent as it is. Fields other than these
    (``meta``, ...) are kept as the example's metadata and never scored."""

    model_config = ConfigDict(extra="allow", strict=True)
    subtask: UnicodeStr | None = None
    id: UnicodeStr | None = None
    messages: list[Message] | None = None
    prompt: UnicodeStr | None = None
    completion: UnicodeStr | None = None


class SelectRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "targets": [{"subtask": "math", "prompt": "3+4=", "completion": "7"}],
                    "method": "less",
                    "fraction": 0.05,
                }
            ],
            # exactly one budget: top_k (an integer) or fraction (a number), never both
            "oneOf": [
                {
                    "required": ["top_k"],
                    "properties": {"top_k": {"type": "integer"}, "fraction": {"type": "null"}},
                },
                {
                    "required": ["fraction"],
                    "properties": {"fraction": {"type": "number"}, "top_k": {"type": "null"}},
                },
            ],
        },
    )
    targets: list[Target] = Field(min_length=1)
    method: str = Field("less", max_length=64)
    top_k: int | None = Field(
        None, ge=1, description="How many to select. Exactly one of top_k and fraction."
    )
    fraction: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Share of the pool to select. Exactly one of top_k and fraction.",
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Method options.")
    explain: bool = Field(
        False,
        description="Also say, for each selected example, the target point and subtask that "
        "pulled it in and its share of the score, and for each target point its coverage.",
    )

    @model_validator(mode="after")
    def _one_budget(self) -> SelectRequest:
        if (self.top_k is None) == (self.fraction is None):
            raise ValueError("give exactly one of 'top_k' or 'fraction'")
        return self


class MethodsRequest(BaseModel):
    """Selection methods a ready datastore should also serve."""

    model_config = ConfigDict(extra="forbid")
    methods: list[str] = Field(min_length=1, max_length=32, examples=[["rds", "dsir"]])


class MethodInfo(_Public):
    name: str
    default: bool = Field(description="Served by a store created without a method list.")
    model: str = Field(description="What the query loads: none, base or checkpoints.")
    artifacts: list[str] = Field(description="Store artifacts its default options read.")
    options: dict[str, Any] = Field(description="JSON schema of the method's options.")


class MethodPage(_Public):
    data: list[MethodInfo]
    count: int


class SelectedPublic(_Public):
    id: str
    score: float
    subtask: str
    weight: float | None = Field(
        None, description="Training weight, for methods that give one (influence_distillation)."
    )


class SelectResponse(_Public):
    datastore_id: str
    method: str
    selected: list[SelectedPublic]
    num_candidates: int
    timings_ms: dict[str, float] = {}
    details: dict[str, Any] = {}
    explanation: dict[str, Any] | None = Field(
        None, description="With explain: per example its target point; per target its coverage."
    )
    coverage: dict[str, Any] | None = Field(
        None,
        description="in2core: per target point, how many strong proponents the pool holds "
        "and its top ones ({threshold, z, targets: [{target, subtask, strong_proponents, "
        "top: [{id, score}]}]}); also in details.coverage.",
    )
    selection_id: str | None = Field(
        None, description="The audit record; its HTML report is at .../selections/{id}/report."
    )


class SelectionPublic(_Public):
    """One audit record: the request without target texts, the size and the timings."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    datastore_id: str
    method: str
    num_targets: int
    num_selected: int
    request: dict[str, Any]
    timings_ms: dict[str, float]
    created_at: datetime


class SelectionPage(_Public):
    data: list[SelectionPublic]
    count: int


class HealthStatus(_Public):
    status: str
