"""Gradient heads: what one backward's per-example LoRA gradient becomes before projection.

A head is a gradient source (the LoRA parameters of the store's model) × a preconditioner
(nothing, Adam's Γ, Influence Distillation's a ⊙ g, ...) × the store's projection. One
forward and backward per batch feeds every head asked for (``featurizer``); a head only
says, at a checkpoint, which transform the gradient goes through. Adding a head is one
module that calls ``register_head`` (see docs/architecture.md).

A transform has ``apply_(grads, offset)`` — precondition the (B, size) rows of one LoRA map,
whose parameters start at ``offset`` of the flat gradient, in place — and ``__call__(grads)``
on whole (B, P) gradients (the one-at-a-time reference).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import torch

if TYPE_CHECKING:
    from gradstore.features.checkpoint_model import CheckpointModel


class Transform(Protocol):
    def apply_(self, grads: torch.Tensor, offset: int) -> torch.Tensor: ...
    def __call__(self, grads: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class GradientHead:
    name: str  # the feature kind it writes ("adam" → artifact gradients.adam)
    description: str
    # the transform at checkpoint ``index`` of the model (None: the plain gradient g)
    preconditioner: Callable[[CheckpointModel, int], Transform | None]
    source: Literal["lora"] = "lora"


HEADS: dict[str, GradientHead] = {}


def register_head(head: GradientHead) -> GradientHead:
    """Make ``head`` a feature kind every featurizer can be asked for."""
    if head.name in HEADS and HEADS[head.name] != head:
        raise ValueError(f"a different gradient head is already registered as {head.name!r}")
    HEADS[head.name] = head
    return head


def get_head(name: str) -> GradientHead:
    try:
        return HEADS[name]
    except KeyError:
        raise ValueError(f"unknown feature kind {name!r}; known: {sorted(HEADS)}") from None


register_head(GradientHead("sgd", "the plain gradient g", lambda model, index: None))
register_head(
    GradientHead(
        "adam",
        "LESS's Adam-preconditioned gradient Γ(g) (the checkpoint's Adam moments)",
        lambda model, index: model.preconditioner(index),
    )
)
register_head(
    GradientHead(
        "update",
        "Influence Distillation's a ⊙ g: one Adam step's direction (update_directions)",
        lambda model, index: model.update_direction(index),
    )
)
