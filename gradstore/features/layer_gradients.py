"""Per-layer gradient features on a subset of transformer blocks, with a truncated backward.

In2Core computes influence on a reduced set of layers L' (default the last quarter of the
blocks). Freezing every LoRA weight outside L' for the pass means no activation before the
first block of L' needs a gradient, so autograd neither records that part of the forward nor
runs the backward through it: that is the method's speed-up (``bench/layer_subset.py``).

Each block's gradient is projected on its own (its own d columns), so DataInf's per-layer
damping λ_l — which needs each layer's ‖g_l‖² — stays per layer. A feature is stored as its
projected direction (unit norm) and the *unprojected* norm ‖g_l‖: the projection preserves
inner products of directions in expectation, and the true norms keep λ_l and the closed-form
denominators exact.
"""

from __future__ import annotations

import re
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from gradstore.features.batching import length_sorted_batches
from gradstore.features.gradients import LoraGradientComputer
from gradstore.features.modeling import lora_parameter_names
from gradstore.features.tokenization import TokenizedExample, collate

_BLOCK = re.compile(r"\.(?:layers|h|blocks|layer)\.(\d+)\.")


def block_of(name: str) -> int:
    """The transformer block index of a LoRA parameter name (``...layers.7.self_attn...``)."""
    found = _BLOCK.search(name) or re.search(r"\.(\d+)\.", name)
    if found is None:
        raise ValueError(f"cannot tell the transformer block of parameter {name!r}")
    return int(found.group(1))


def lora_blocks(model: nn.Module) -> OrderedDict[int, list[str]]:
    """LoRA parameter names per block, blocks ascending, names in canonical order."""
    groups: dict[int, list[str]] = {}
    for name in lora_parameter_names(model):
        groups.setdefault(block_of(name), []).append(name)
    return OrderedDict(sorted(groups.items()))


def default_layers(blocks: Sequence[int]) -> list[int]:
    """In2Core's default L': the last quarter of the blocks that carry LoRA weights (≥ 1)."""
    ordered = sorted(blocks)
    keep = max(1, -(-len(ordered) // 4))
    return ordered[-keep:]


@contextmanager
def only_trainable(model: nn.Module, names: Sequence[str]) -> Iterator[None]:
    """Temporarily freeze every trainable weight not in ``names``: backward stops early."""
    keep = set(names)
    frozen = [p for n, p in model.named_parameters() if p.requires_grad and n not in keep]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


if TYPE_CHECKING:
    from gradstore.features.projection import Projector


class LayerFeaturizer:
    """Per-block projected gradient directions and unprojected norms of examples.

    ``featurize`` returns (directions (n, L, dim) float32 unit rows, norms (n, L) float32),
    rows in the order given. One projector over the chosen weights; block l's slice of it
    writes only block l's columns.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[int],
        dim: int,
        make_projector: Callable[[int, int], Projector],
        pad_token_id: int,
        batch_size: int,
        batch_tokens: int | None = None,
    ):
        blocks = lora_blocks(model)
        missing = sorted(set(layers) - set(blocks))
        if missing:
            raise ValueError(f"blocks {missing} carry no LoRA weight; known: {list(blocks)}")
        self.model = model
        self.layers = sorted(layers)
        self.names = [n for layer in self.layers for n in blocks[layer]]
        self.dim = dim
        self.pad_token_id = pad_token_id
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens or sys.maxsize  # padded tokens per batch (memory)
        self.gradients = LoraGradientComputer(model, self.names)
        self.projector = make_projector(self.gradients.num_parameters, dim)
        name_layer = {n: i for i, layer in enumerate(self.layers) for n in blocks[layer]}
        self.layer_sizes = np.zeros(len(self.layers), dtype=np.int64)  # p_l, for λ_l
        for name, size in zip(self.gradients.names, self.gradients.sizes, strict=True):
            self.layer_sizes[name_layer[name]] += size
        self._layer_at = {
            offset: name_layer[name]
            for offset, name in zip(self.gradients.offsets, self.gradients.names, strict=True)
        }

    def _batch(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = batch["input_ids"].shape[0]
        device = self.projector.device
        out = torch.zeros(rows, len(self.layers), self.dim, device=device)
        squares = torch.zeros(rows, len(self.layers), dtype=torch.float64, device=device)

        def consume(offset: int, grads: torch.Tensor) -> None:
            layer = self._layer_at[offset]
            grads = grads.to(device)
            squares[:, layer] += grads.double().square().sum(dim=1)
            self.projector.accumulate(out[:, layer], grads, offset, reuse_input=True)

        with only_trainable(self.model, self.names):
            self.gradients.for_each_module(batch, consume)
        return nn.functional.normalize(out, dim=2), squares.sqrt().float()

    def featurize(
        self,
        examples: Sequence[TokenizedExample],
        on_batch: Callable[[int], None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        lengths = [len(e.input_ids) for e in examples]
        directions = np.empty((len(examples), len(self.layers), self.dim), dtype=np.float32)
        norms = np.empty((len(examples), len(self.layers)), dtype=np.float32)
        for positions in length_sorted_batches(lengths, self.batch_size, self.batch_tokens):
            batch = collate([examples[i] for i in positions], self.pad_token_id)
            d, n = self._batch(batch)
            directions[positions] = d.cpu().numpy()
            norms[positions] = n.cpu().numpy()
            if on_batch is not None:
                on_batch(len(positions))
        return directions, norms
