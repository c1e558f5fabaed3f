"""RDS+ representations: position-weighted mean-pooled final hidden states of the base model.

RDS+ (Ivison et al., 2025) embeds an example by the last layer's hidden states over its
prompt and response, averaged with weights w_t ∝ t (later tokens have seen more of the
example), then L2-normalised; selection is by cosine. Forward passes only, no adapter: the
base model is what the method specifies, and it is the cheapest strong selector at scale.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch
from peft import PeftModel

from gradstore.features.batching import length_sorted_batches
from gradstore.features.tokenization import TokenizedExample, collate


def position_weighted_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H) hidden states of right-padded rows → (B, H) L2-normalised pooled vectors.

    Token t (1-based among the row's real tokens) has weight t / Σ t; pads weigh nothing.
    """
    mask = attention_mask.to(torch.float32)
    positions = mask.cumsum(dim=1) * mask
    weights = positions / positions.sum(dim=1, keepdim=True)
    pooled = torch.einsum("bt,bth->bh", weights, hidden.to(torch.float32))
    return torch.nn.functional.normalize(pooled, dim=1)


def decoder_of(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer backbone (no LM head): its last hidden state is after the final norm."""
    if isinstance(model, PeftModel):
        model = model.get_base_model()
    prefix = str(model.base_model_prefix)
    backbone = getattr(model, prefix)
    assert isinstance(backbone, torch.nn.Module), f"{prefix} is not the model's backbone"
    return backbone


class HiddenStateEncoder:
    """Embeds tokenised examples with a causal LM's backbone, batched by length."""

    def __init__(
        self,
        model: torch.nn.Module,
        pad_token_id: int,
        batch_size: int,
        context: Callable[[], AbstractContextManager] = nullcontext,
        batch_tokens: int | None = None,
    ):
        self.backbone = decoder_of(model)
        self.context = context  # e.g. a PEFT model's ``disable_adapter``: the base model
        self.pad_token_id = pad_token_id
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens or sys.maxsize  # padded tokens per batch (memory)
        self.device = next(self.backbone.parameters()).device

    @torch.no_grad()
    def embed(
        self,
        examples: Sequence[TokenizedExample],
        on_batch: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """(n, hidden) float32, L2-normalised, rows in the order of ``examples``."""
        hidden = int(getattr(self.backbone, "config").hidden_size)  # noqa: B009
        out = np.empty((len(examples), hidden), dtype=np.float32)
        lengths = [len(e.input_ids) for e in examples]
        for positions in length_sorted_batches(lengths, self.batch_size, self.batch_tokens):
            batch = collate([examples[i] for i in positions], self.pad_token_id)
            mask = batch["attention_mask"].to(self.device)
            with self.context():
                states = self.backbone(
                    input_ids=batch["input_ids"].to(self.device), attention_mask=mask
                ).last_hidden_state
            out[positions] = position_weighted_mean(states, mask).cpu().numpy()
            if on_batch is not None:
                on_batch(len(positions))
        return out
