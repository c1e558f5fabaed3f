"""What a build request must pass before it is queued: everything knowable at submission.

A build accepted with 202 and failing hours later, after its warmup and featurization, for
a reason known at the start (an index factory FAISS cannot parse, LoRA targets the model
lacks, a template the tokenizer lacks, warmup directories without adapters) costs a user a
day; so does one that exhausts a worker's memory on a number nobody bounded.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from pydantic import ValidationError

from gradstore.api_models import DatastoreCreate
from gradstore.config import BuildConfig
from gradstore.errors import GradstoreError, InvalidInputError
from gradstore.service.problems import describe_validation_errors
from gradstore.validation import BuildPlan, check_build_request

log = logging.getLogger("gradstore.api")

# Integers of an index factory string, bounded before FAISS sees it: FAISS allocates some
# structures when it parses the string (``IVF1000000000,Flat`` asks for 10^9 lists).
_FACTORY_LIMITS = (
    (re.compile(r"IVF(\d+)"), 1 << 20, "inverted lists"),
    (re.compile(r"IMI\d+x(\d+)"), 12, "bits per multi-index level"),
    (re.compile(r"x(\d+)"), 16, "bits per code"),
    (re.compile(r"HNSW(\d+)"), 512, "HNSW links per node"),
    (re.compile(r"NSG(\d+)"), 512, "NSG links per node"),
    (re.compile(r"(\d+)"), 1 << 20, "any size"),
)


def build_config(body: DatastoreCreate) -> BuildConfig:
    """The request's build configuration (its fields were validated with the body)."""
    try:
        return body.build_config()
    except ValidationError as exc:
        raise InvalidInputError(f"options: {describe_validation_errors(exc.errors())}") from None


def check_bounds(config: BuildConfig, num_examples: int) -> None:
    """What FAISS and torch would only refuse (or exhaust memory on) much later."""
    for name, seed in (
        ("warmup.seed", config.warmup.seed),
        ("projection.seed", config.projection.seed),
    ):
        if not 0 <= seed < 1 << 63:
            raise InvalidInputError(f"{name} must be in [0, 2^63)")
    factory = config.index_factory
    if len(factory) > 200 or not factory.isascii() or not factory.isprintable():
        raise InvalidInputError(
            "options.index_factory must be at most 200 printable ASCII characters"
        )
    for pattern, limit, what in _FACTORY_LIMITS:
        for match in pattern.finditer(factory):
            if int(match.group(1)) > limit:
                raise InvalidInputError(
                    f"options.index_factory: {match.group(0)!r} exceeds {limit} {what}"
                )
    for match in re.finditer(r"IVF(\d+)", factory):
        if int(match.group(1)) > num_examples:
            raise InvalidInputError(
                f"options.index_factory: {match.group(0)} needs at least {match.group(1)} "
                f"training vectors; the dataset has {num_examples} examples"
            )


def check_submission(
    model_dir: Path, config: BuildConfig, warmup_dirs: list[Path], num_examples: int
) -> BuildPlan:
    check_bounds(config, num_examples)
    try:
        return check_build_request(model_dir, config, warmup_dirs, num_examples)
    except GradstoreError:
        raise
    except Exception as exc:  # whatever a user's model directory makes transformers raise
        log.warning("build request refused: the model could not be inspected", exc_info=True)
        raise InvalidInputError(
            f"the model directory could not be loaded ({type(exc).__name__}: {exc})"
        ) from None
