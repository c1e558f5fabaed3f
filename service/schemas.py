"""Request and response bodies of API v1 (DESIGN.md §2): families of XCreate / XPublic."""

from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from gradstore.config import LoraConfig, ProjectionConfig, WarmupConfig
from gradstore.examples import Message

Status = Literal["queued", "warmup", "featurize", "index", "ready", "failed", "cancelled"]


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


class DatasetPublic(BaseModel):
    id: str
    name: str
    num_examples: int
    sha256: str
    created_at: datetime


class DatasetPage(BaseModel):
    data: list[DatasetPublic]
    count: int


class ModelRef(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    path: UnicodeStr = Field(
        max_length=4096,
        description="An absolute local directory that transformers can load, inside one of "
        "the service's model roots (GRADSTORE_MODEL_ROOTS).",
    )


class DatastoreCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
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
    model: ModelRef
    lora: LoraConfig = LoraConfig()
    warmup: WarmupConfig = WarmupConfig()
    projection: ProjectionConfig = ProjectionConfig()
    max_seq_len: int = Field(2048, ge=8, le=65536)
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Other BuildConfig fields (batch_size, shard_size, dtype, pool_features, "
        "index_factory, template).",
    )
    warmup_from: list[Annotated[UnicodeStr, Field(max_length=4096)]] = Field(
        default_factory=list,
        max_length=64,
        description="Checkpoint dirs of an existing LESS warmup to reuse (inside the model roots).",
    )


class Progress(BaseModel):
    stage: Status
    done: int
    total: int
    examples_per_s: float | None
    eta_s: float | None


class CheckpointPublic(BaseModel):
    index: int
    learning_rate: float


class DatastorePublic(BaseModel):
    id: str
    dataset_id: str
    status: Status
    progress: Progress
    checkpoints: list[CheckpointPublic]
    num_examples: int | None
    dim: int | None
    error: str | None
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
    created_at: datetime


class DatastorePage(BaseModel):
    data: list[DatastorePublic]
    count: int


class Target(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
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

    @model_validator(mode="after")
    def _one_budget(self) -> SelectRequest:
        if (self.top_k is None) == (self.fraction is None):
            raise ValueError("give exactly one of 'top_k' or 'fraction'")
        return self


class SelectedPublic(BaseModel):
    id: str
    score: float
    subtask: str


class SelectResponse(BaseModel):
    datastore_id: str
    method: str
    selected: list[SelectedPublic]
    num_candidates: int
    timings_ms: dict[str, float]
    details: dict[str, Any] = {}


class SelectionPublic(BaseModel):
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


class SelectionPage(BaseModel):
    data: list[SelectionPublic]
    count: int
