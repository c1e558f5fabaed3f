"""Everything about a build request that can be known before any work is queued.

A build accepted now and failing after its warmup and featurization (an unparsable index
factory, LoRA targets the model lacks, a template the tokenizer cannot render, warmup
directories without adapters) costs a user hours; a warmup that makes too few optimizer
steps to move the adapter "succeeds" uselessly. Both are checked here, cheaply: the model is
instantiated on the meta device (no weights read), the tokenizer is loaded, and the warmup
plan is computed from the pool size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gradstore.config import BuildConfig
from gradstore.errors import ConflictError, InvalidInputError
from gradstore.store.index import check_factory

MIN_WARMUP_STEPS = 8  # below this the adapter barely leaves its initialisation


@dataclass(frozen=True)
class BuildPlan:
    """What a valid request will do, and what the user should know about it."""

    warmup_examples: int | None
    optimizer_steps: int | None
    warnings: list[str]


def warmup_steps(num_examples: int, config: BuildConfig) -> tuple[int, int, int]:
    """(warmup sample size, optimizer steps per epoch, steps at a zero learning rate)."""
    from gradstore.features.warmup import warmup_plan

    warmup = config.warmup
    sample = max(1, min(num_examples, round(warmup.fraction * num_examples)))
    _, per_epoch = warmup_plan(sample, warmup.batch_size, warmup.gradient_accumulation)
    total = per_epoch * warmup.epochs
    return sample, per_epoch, math.ceil(warmup.warmup_ratio * total)


def warmup_warning(num_examples: int, config: BuildConfig) -> str | None:
    """A plain explanation when the warmup would make too few optimizer steps."""
    sample, per_epoch, zero_rate = warmup_steps(num_examples, config)
    warmup = config.warmup
    total = per_epoch * warmup.epochs
    if total >= MIN_WARMUP_STEPS:
        return None
    per_step = warmup.batch_size * warmup.gradient_accumulation
    return (
        f"the warmup trains on {sample} examples ({warmup.fraction:g} of {num_examples}) with "
        f"{per_step} examples per optimizer step, so it makes only {total} optimizer steps "
        f"({per_epoch} per epoch × {warmup.epochs} epochs, {zero_rate} of them at a learning "
        f"rate of 0 during the linear warmup): the adapter will barely move from its "
        f"initialisation and the gradient features will mean little. Raise warmup.fraction, "
        f"lower warmup.gradient_accumulation or warmup.batch_size (at least "
        f"{MIN_WARMUP_STEPS} steps in all), or raise warmup.learning_rate."
    )


def check_build_request(
    model_dir: Path,
    config: BuildConfig,
    warmup_from: Sequence[Path] = (),
    num_examples: int | None = None,
) -> BuildPlan:
    """Raise ``InvalidInputError`` for what would fail later; return the plan and warnings."""
    check_factory(config.index_factory)
    check_model_dir(model_dir)
    _check_model_and_targets(model_dir, config)
    _check_template(model_dir, config)
    for directory in warmup_from:
        _check_warmup_directory(Path(directory))
    from gradstore.selection.needs import needs_warmup, store_methods

    warnings: list[str] = []
    sample = steps = None
    if num_examples is not None and not warmup_from and needs_warmup(store_methods(config)):
        sample, per_epoch, _ = warmup_steps(num_examples, config)
        steps = per_epoch * config.warmup.epochs
        if (warning := warmup_warning(num_examples, config)) is not None:
            warnings.append(warning)
    return BuildPlan(sample, steps, warnings)


def check_without_model(config: BuildConfig, warmup_from: Sequence[object] = ()) -> BuildPlan:
    """A request without a model: only for methods that read the pool's text alone."""
    from gradstore.selection.needs import methods_needing_a_model, store_methods

    check_factory(config.index_factory)
    needing = methods_needing_a_model(store_methods(config))
    if needing:
        raise InvalidInputError(
            f"a model is needed: {', '.join(needing)} run the model (the default methods do); "
            "only methods that read the text alone (bm25, dsir, random) build without one"
        )
    if warmup_from:
        raise InvalidInputError("warmup_from needs a model, and these methods need no warmup")
    return BuildPlan(None, None, [])


def check_extension(
    methods: Sequence[str], has_model: bool, has_warmup: bool, kinds: set[str]
) -> None:
    """Can a ready store gain ``methods``? A 409 saying what only a new build can make:
    the model, the warmup checkpoints and the gradient features of ``kinds`` (a store built
    without them cannot be given them later)."""
    from gradstore.artifacts import ARTIFACTS
    from gradstore.selection import method_requirements
    from gradstore.selection.needs import methods_needing_a_model, methods_needing_the_warmup

    needing = [] if has_model else methods_needing_a_model(methods)
    if needing:
        raise ConflictError(
            f"this datastore was built without a model; {', '.join(needing)} need one, and a "
            "model cannot be added to a built store: create a new datastore with model.path "
            "and these methods"
        )
    needing = [] if has_warmup else methods_needing_the_warmup(methods)
    if needing:
        raise ConflictError(
            f"this datastore was built without the warmup (its methods needed none); "
            f"{', '.join(needing)} need its checkpoints or gradient features, which only a "
            "build makes: create a new datastore with these methods"
        )
    for method in methods:
        for artifact in method_requirements(method).artifacts:
            if not ARTIFACTS[artifact].extendable and artifact.split(".", 1)[-1] not in kinds:
                raise ConflictError(
                    f"method {method!r} needs {artifact!r}, which only a build makes: create "
                    f"a datastore whose pool_features include {artifact.split('.', 1)[-1]!r}"
                )


WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def check_model_dir(model_dir: Path) -> None:
    """A Hugging Face model directory holds a config, weights and a tokenizer: say which is
    missing now, not after a queued build fails to load it."""
    model_dir = Path(model_dir)
    hint = "give a local Hugging Face model directory (gradstore models get makes one)"
    if not model_dir.exists():
        raise InvalidInputError(f"the model directory {model_dir} does not exist; {hint}")
    if not model_dir.is_dir():
        raise InvalidInputError(f"the model path {model_dir} is not a directory; {hint}")
    if not (model_dir / "config.json").is_file():
        raise InvalidInputError(f"the model directory {model_dir} has no config.json; {hint}")
    if not any(next(model_dir.glob(pattern), None) for pattern in WEIGHT_FILES):
        raise InvalidInputError(
            f"the model directory {model_dir} has no weights (*.safetensors or "
            f"pytorch_model*.bin); {hint}"
        )
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        raise InvalidInputError(
            f"the model directory {model_dir} has no tokenizer ({', '.join(TOKENIZER_FILES)}); "
            f"save the tokenizer with the model (tokenizer.save_pretrained)"
        )


def _check_model_and_targets(model_dir: Path, config: BuildConfig) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from gradstore.features.modeling import default_target_modules, matches_target

    try:
        model_config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"the model directory has no usable config.json: {exc}") from None
    with torch.device("meta"):  # the module tree only: no weights are read or allocated
        try:
            model = AutoModelForCausalLM.from_config(model_config)
        except ValueError as exc:
            raise InvalidInputError(f"not a causal language model: {exc}") from None
    targets = config.lora.target_modules or default_target_modules(model)
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(matches_target(name, t) for name in names)]
    if missing:
        raise InvalidInputError(
            f"lora.target_modules {missing} match no module of this {model_config.model_type} "
            f"model (its attention modules are named like {_examples(names)})"
        )


def _examples(names: list[str]) -> str:
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names if "attn" in n or "attention" in n})
    return ", ".join(leaves[:8]) or ", ".join(sorted({n.rsplit(".", 1)[-1] for n in names})[:8])


def _check_template(model_dir: Path, config: BuildConfig) -> None:
    if config.template != "chat_template":
        return
    from gradstore.features.modeling import load_tokenizer

    if not getattr(load_tokenizer(model_dir), "chat_template", None):
        raise InvalidInputError(
            "template 'chat_template' was asked for, but the model's tokenizer has no chat "
            "template; use 'tulu' or 'auto'"
        )


def _check_warmup_directory(directory: Path) -> None:
    from gradstore.features.checkpoints import ADAPTER_CONFIG

    if not directory.is_dir():
        raise InvalidInputError(f"warmup checkpoint {directory.name!r} is not a directory")
    if not (directory / ADAPTER_CONFIG).is_file():
        raise InvalidInputError(
            f"warmup checkpoint {directory.name!r} has no {ADAPTER_CONFIG}: not a PEFT checkpoint"
        )
    weights = ("adapter_model.safetensors", "adapter_model.bin")
    if not any((directory / name).is_file() for name in weights):
        raise InvalidInputError(f"warmup checkpoint {directory.name!r} has no adapter weights")
    optimizers = ("optimizer.bin", "optimizer.pt")
    if not any((directory / name).is_file() for name in optimizers):
        raise InvalidInputError(
            f"warmup checkpoint {directory.name!r} has no optimizer.bin or optimizer.pt: LESS "
            "needs the Adam moments of every checkpoint"
        )
