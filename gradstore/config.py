"""Typed, persisted configuration shared by the API, the CLI and the worker.

One pydantic model per concern; the whole ``BuildConfig`` is saved beside every datastore
so that a query can check it is meaningful for the store it reads. It is the one source of
every build setting: the API request embeds it (``gradstore.api_models``), the CLI flags of
``gradstore build`` are generated from it (``gradstore.cli.flags``), and every default is
resolved here, so the same request gives the same stored config from any entry point.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# s of the default 'sparse' projection (docs/decisions.md: chosen by bench/projection_fidelity)
DEFAULT_NONZEROS = 4
# LESS's alpha/r: r = 128 with alpha = 512. A rank given without an alpha keeps the ratio.
ALPHA_PER_RANK = 4.0


def _no_default_in_schema(schema: dict[str, Any]) -> None:
    """A default filled in by a validator is not a constant: the schema names none."""
    schema.pop("default", None)


class LoraConfig(_Config):
    r: int = Field(128, ge=1, le=4096, description="LoRA rank.")
    alpha: float = Field(
        None,  # type: ignore[assignment]  # always filled in by _alpha_from_rank
        gt=0,
        description="LoRA alpha; the update is scaled by alpha/r. Default 4·r "
        "(LESS: r=128, alpha=512).",
        json_schema_extra=_no_default_in_schema,
    )
    dropout: float = Field(0.1, ge=0, lt=1, description="LoRA dropout during warmup.")
    target_modules: list[str] | None = Field(
        None, description="Module names to adapt; chosen per architecture when omitted."
    )

    @model_validator(mode="before")
    @classmethod
    def _alpha_from_rank(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("alpha") is None:
            r = data.get("r", cls.model_fields["r"].default)
            if isinstance(r, int | float) and not isinstance(r, bool):
                data = {**data, "alpha": ALPHA_PER_RANK * r}
        return data


class WarmupConfig(_Config):
    fraction: float = Field(0.05, gt=0, le=1, description="Share of the pool used to warm up.")
    epochs: int = Field(4, ge=1, le=100, description="Warmup epochs; one checkpoint each.")
    learning_rate: float = Field(2e-5, gt=0, description="Peak AdamW learning rate.")
    seed: int = Field(0, description="Seed for the warmup sample, LoRA init and data order.")
    batch_size: int = Field(8, ge=1, description="Micro-batch size.")
    gradient_accumulation: int = Field(
        16, ge=1, description="Micro-batches per optimizer step (effective batch 128 by default)."
    )
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Linear-warmup share of steps.")


class ProjectionConfig(_Config):
    dim: int = Field(8192, ge=1, le=65536, description="Projected feature dimension d.")
    seed: int = Field(0, description="Seed of the projection; the matrix is a pure function of it.")
    kind: Literal["sparse", "sjlt", "rademacher"] = Field(
        "sparse",
        description="Projector: 'sparse', a sparse JL transform with 'nonzeros' ±1 per input "
        "coordinate costing O(s·P) per example (the default); 'sjlt', the same with one "
        "(a CountSketch: the default of earlier stores); or 'rademacher', the dense ±1 "
        "matrix costing O(P·d) (toy models, old stores).",
    )
    nonzeros: int | None = Field(
        None,
        ge=1,
        le=64,
        description="s, the nonzeros per input coordinate of the 'sparse' projection "
        "(default 4); 1 for 'sjlt', none for 'rademacher'.",
        json_schema_extra=_no_default_in_schema,
    )

    @model_validator(mode="after")
    def _nonzeros_of_kind(self) -> ProjectionConfig:
        fixed = {"sjlt": 1, "rademacher": None}
        if self.kind in fixed:
            if self.nonzeros not in (None, fixed[self.kind]):
                raise ValueError(f"projection kind {self.kind!r} takes no nonzeros")
            object.__setattr__(self, "nonzeros", fixed[self.kind])
        elif self.nonzeros is None:
            object.__setattr__(self, "nonzeros", DEFAULT_NONZEROS)
        if self.nonzeros is not None and self.nonzeros > self.dim:
            raise ValueError(f"nonzeros {self.nonzeros} exceeds dim {self.dim}")
        return self


class DeliftConfig(_Config):
    neighbours: int = Field(
        32,
        ge=1,
        le=1024,
        description="K: nearest neighbours (gradient space) whose in-context utility the "
        "delift_kernel artifact keeps per example; it costs n·(K + 1) pair forwards.",
    )


class BuildConfig(_Config):
    """Everything that determines the bytes of a datastore."""

    lora: LoraConfig = LoraConfig()
    warmup: WarmupConfig = WarmupConfig()
    projection: ProjectionConfig = ProjectionConfig()
    max_seq_len: int = Field(
        2048,
        ge=8,
        le=65536,
        description="Longest example in tokens: a longer one loses prompt tokens from the "
        "left first, then completion tokens from the right.",
    )
    template: Literal["auto", "tulu", "chat_template"] = Field(
        "auto", description="Prompt format: the tokenizer's chat template if it has one (auto)."
    )
    batch_size: int = Field(16, ge=1, le=4096, description="Featurization batch size.")
    batch_tokens: int = Field(
        512,
        ge=8,
        le=1 << 24,
        description="Most padded tokens (rows × longest row) in one batch of any model pass: "
        "bounds activation memory (a backward of a 135M model in fp32 holds about 2.4 MB a "
        "token; raise it on a GPU). Warmup micro-batches are split by it too, their gradient "
        "unchanged.",
    )
    dtype: Literal["float16", "float32", "int8", "int4", "int2", "int1"] = Field(
        "float16",
        description="Stored gradient feature type: 'float16' (default), 'float32', or a code "
        "of 8, 4, 2 or 1 bits per dimension with one float32 scale per 'scale_block' "
        "dimensions (absmax; 1 bit: sign times mean |x|), decoded block by block when read.",
    )
    scale_block: int | None = Field(
        None,
        ge=1,
        description="Dimensions sharing one scale in a coded store (int8 to int1); must divide "
        "the projection dim. Default: one scale per row.",
    )
    shard_size: int = Field(1024, ge=1, description="Examples per featurize shard.")
    index_factory: str = Field(
        "Flat",
        description="'Flat' (or 'SQfp16'): exact search over the stored fp16 features, no "
        "second copy. Any other FAISS factory string (e.g. 'IVF1024,PQ64') builds an "
        "approximate inner-product index beside them, searched with options.search='index'.",
    )
    methods: list[str] | None = Field(
        None,
        description="Selection methods the store must serve; their extra artifacts (RDS+ "
        "embeddings, DSIR n-gram counts, ...) are computed with the build. Default: every "
        "method whose artifacts cost less than the gradient features.",
    )
    pool_features: list[Literal["adam", "sgd"]] = Field(
        ["adam"], description="Pool feature kinds kept in the store ('adam' is LESS's)."
    )
    delift: DeliftConfig = DeliftConfig()

    @model_validator(mode="after")
    def _scale_block_divides_dim(self) -> BuildConfig:
        if self.dtype.startswith("int") and self.projection.dim % 8:
            raise ValueError(
                f"a coded store needs projection dim a multiple of 8, not {self.projection.dim}"
            )
        if self.scale_block is not None and self.projection.dim % self.scale_block:
            raise ValueError(
                f"scale_block {self.scale_block} must divide projection dim {self.projection.dim}"
            )
        return self


def config_flag(path: tuple[str, ...]) -> str:
    """The command-line flag that sets the field at ``path`` (``('lora', 'r')`` → ``--lora-r``)."""
    *sections, name = path
    if sections and name.startswith(sections[-1] + "_"):
        sections = sections[:-1]  # warmup.warmup_ratio is --warmup-ratio
    return "--" + "-".join(w.replace("_", "-") for w in (*sections, name))
