"""Request and response bodies of API v1 (DESIGN.md §2): families of XCreate / XPublic."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gradstore.config import LoraConfig, ProjectionConfig, WarmupConfig
from gradstore.examples import Message

Status = Literal["queued", "warmup", "featurize", "index", "ready", "failed", "cancelled"]


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
    name: str = Field(min_length=1, max_length=200)
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
    path: str = Field(description="A local directory that transformers can load.")


class DatastoreCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
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
    dataset_id: str
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
    warmup_from: list[str] = Field(
        default_factory=list, description="Checkpoint dirs of an existing LESS warmup to reuse."
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
    created_at: datetime


class DatastorePage(BaseModel):
    data: list[DatastorePublic]
    count: int


class Target(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subtask: str | None = None
    id: str | None = None
    messages: list[Message] | None = None
    prompt: str | None = None
    completion: str | None = None


class SelectRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "targets": [{"subtask": "math", "prompt": "3+4=", "completion": "7"}],
                    "method": "less",
                    "fraction": 0.05,
                }
            ]
        },
    )
    targets: list[Target] = Field(min_length=1)
    method: str = "less"
    top_k: int | None = Field(None, ge=1, description="How many to select; or give fraction.")
    fraction: float | None = Field(None, gt=0, le=1, description="Share of the pool to select.")
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
