"""Does a selection teach the target? Fine-tune a fresh LoRA on it and measure target loss.

The quality benchmarks' yardstick: a LoRA adapter (r = 8) trained on the base model (the toy
one or a real one) with the selected examples only, then the mean completion loss on held-out
examples of the target's skill (lower is better). Seeded: the same training set gives the same
loss. Batches are cut to ``batch_tokens`` padded tokens (a real model's activations) and the
loss never builds the full-vocabulary logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from gradstore.config import LoraConfig
from gradstore.features.batching import length_sorted_batches, pack
from gradstore.features.losses import completion_losses
from gradstore.features.modeling import attach_new_lora, load_base_model
from gradstore.features.tokenization import TokenizedExample, collate

BATCH_SIZE = 8
BATCH_TOKENS = 2048


def fine_tune(
    model_dir: str | Path,
    train: Sequence[TokenizedExample],
    pad: int,
    epochs: int,
    seed: int = 0,
    learning_rate: float = 1e-3,
):
    """A fresh LoRA on the base model, trained ``epochs`` times over ``train`` (AdamW)."""
    torch.manual_seed(seed)
    model = attach_new_lora(load_base_model(model_dir, "cpu"), LoraConfig(r=8, alpha=32), seed)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=learning_rate
    )
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(train), generator=generator).tolist()
        for start in range(0, len(order), BATCH_SIZE):
            rows = order[start : start + BATCH_SIZE]
            lengths = {i: len(train[i].input_ids) for i in rows}
            for piece in pack(rows, lengths, len(rows), BATCH_TOKENS):  # same gradient
                batch = collate([train[i] for i in piece], pad)
                (completion_losses(model, batch).sum() / len(rows)).backward()
            optimizer.step()
            optimizer.zero_grad()
    return model.eval()


@torch.no_grad()
def target_loss(model, evaluation: Sequence[TokenizedExample], pad: int) -> float:
    """Mean completion loss over the evaluation examples."""
    losses = torch.zeros(len(evaluation))
    lengths = [len(e.input_ids) for e in evaluation]
    for rows in length_sorted_batches(lengths, 64, BATCH_TOKENS):
        losses[rows] = completion_losses(model, collate([evaluation[i] for i in rows], pad))
    return float(losses.mean())


def fine_tune_and_evaluate(
    model_dir: str | Path,
    train: Sequence[TokenizedExample],
    evaluation: Sequence[TokenizedExample],
    pad: int,
    epochs: int,
    seed: int = 0,
) -> float:
    """Target loss after fine-tuning on ``train`` (no training when it is empty or epochs 0)."""
    return target_loss(fine_tune(model_dir, train, pad, epochs, seed), evaluation, pad)
