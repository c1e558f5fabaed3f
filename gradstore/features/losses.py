"""Per-example completion losses without the (batch, tokens, vocabulary) logits tensor.

A causal LM's own forward turns every position's hidden state into fp32 logits over the whole
vocabulary: at 49k (SmolLM2) or 262k (Gemma 3) entries that one tensor, its softmax and their
gradients dwarf the rest of a LoRA backward. Only positions whose next token is labelled enter
the loss, so ``completion_losses`` runs the decoder, keeps those positions' hidden states, and
computes the output head and the cross-entropy over them in chunks whose logits are recomputed
in the backward (activation checkpointing): at most one chunk's logits exist at a time.
``per_example_losses`` on full logits stays as the obvious reference the tests compare against.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel

from gradstore.features.tokenization import IGNORE_INDEX

# Positions per output-head chunk: 512 × 49k fp32 logits is 100 MB (262k: 537 MB).
DEFAULT_CHUNK_TOKENS = 512


def per_example_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over each example's labelled tokens: (B,)."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    token_losses = nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(shift_labels.shape)
    counts = (shift_labels != IGNORE_INDEX).sum(dim=1).clamp(min=1)
    return token_losses.sum(dim=1) / counts


def causal_lm(model: nn.Module) -> PreTrainedModel:
    """The transformers causal LM inside a PEFT wrapper (LoRA layers are injected in place)."""
    get_base = getattr(model, "get_base_model", None)
    lm = get_base() if callable(get_base) else model
    if not isinstance(lm, PreTrainedModel):
        raise ValueError(f"{type(lm).__name__} is not a transformers causal LM")
    return lm


class _HeadLoss:
    """Output head + cross-entropy of a chunk of positions, as the model's forward would."""

    def __init__(self, lm: PreTrainedModel):
        self.head = lm.get_output_embeddings()
        if self.head is None:
            raise ValueError(f"{type(lm).__name__} has no output embeddings (not a causal LM)")
        config = getattr(lm, "config", None)
        self.softcap = getattr(config, "final_logit_softcapping", None)
        self.scaling = getattr(config, "logits_scaling", None)  # Granite divides by it

    def __call__(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.head(hidden).float()
        if self.scaling:
            logits = logits / self.scaling
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return nn.functional.cross_entropy(logits, targets, reduction="none")


def labelled_token_losses(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy of each labelled next token (N,), the batch row it belongs to (N,)).

    Tokens come row by row in position order. Differentiable; memory for the output head is
    one chunk of ``chunk_tokens`` positions, whatever the batch, length or vocabulary.
    """
    lm = causal_lm(model)
    hidden = lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask)[0]
    shift_labels = labels[:, 1:]
    kept = shift_labels != IGNORE_INDEX
    states = hidden[:, :-1][kept]  # (N, H): only the positions that enter the loss
    del hidden
    targets = shift_labels[kept]
    rows = torch.arange(labels.shape[0], device=labels.device)
    owner = rows.unsqueeze(1).expand_as(shift_labels)[kept]
    head_loss = _HeadLoss(lm)
    parts = []
    for start in range(0, targets.shape[0], chunk_tokens):
        part = slice(start, start + chunk_tokens)
        if torch.is_grad_enabled() and states.requires_grad:
            parts.append(checkpoint(head_loss, states[part], targets[part], use_reentrant=False))
        else:
            parts.append(head_loss(states[part], targets[part]))
    token_losses = torch.cat(parts) if parts else states.new_zeros(0, dtype=torch.float32)
    return token_losses, owner


def completion_loss_sums(
    model: nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy over each example's labelled tokens (B,), their counts (B,))."""
    labels = batch["labels"]
    token_losses, owner = labelled_token_losses(
        model, batch["input_ids"], batch["attention_mask"], labels
    )
    sums = token_losses.new_zeros(labels.shape[0]).index_add(0, owner, token_losses)
    return sums, (labels[:, 1:] != IGNORE_INDEX).sum(dim=1)


def completion_losses(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over each example's labelled tokens: (B,), differentiable.

    Equal to ``per_example_losses(model(...).logits, labels)`` without the full logits.
    """
    sums, counts = completion_loss_sums(model, batch)
    return sums / counts.clamp(min=1)
