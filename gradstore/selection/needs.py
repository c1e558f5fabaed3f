"""What a store's methods pull into its build: the warmup and gradient features, a model.

Read off each method's declared needs (its model and artifacts) and the artifacts' own, so
the build, the submission checks and the selection agree on one answer.
"""

from __future__ import annotations

from collections.abc import Sequence

from gradstore.config import BuildConfig
from gradstore.selection import DEFAULT_METHODS, method_requirements
from gradstore.selection.base import runs_a_model, runs_the_warmup


def store_methods(config: BuildConfig) -> list[str]:
    """The methods a store is built to serve: its config's, else the default set."""
    return list(config.methods) if config.methods is not None else list(DEFAULT_METHODS)


def methods_needing_the_warmup(methods: Sequence[str]) -> list[str]:
    """Those of ``methods`` that run the warmup checkpoints (at query time, or to make an
    artifact) or read gradient features: they pull in warmup, featurize and index."""
    needs = [method_requirements(m) for m in methods]
    return [m for m, n in zip(methods, needs, strict=True) if runs_the_warmup(n.model, n.artifacts)]


def needs_warmup(methods: Sequence[str]) -> bool:
    """Does a store for ``methods`` need the warmup, gradient features and their index?"""
    return bool(methods_needing_the_warmup(methods))


def methods_needing_a_model(methods: Sequence[str]) -> list[str]:
    """Those of ``methods`` whose store or queries run the model (or its tokenizer)."""
    needs = [method_requirements(m) for m in methods]
    return [m for m, n in zip(methods, needs, strict=True) if runs_a_model(n.model, n.artifacts)]
