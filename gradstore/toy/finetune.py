"""Does a selection teach the target? Fine-tune a fresh LoRA on it and measure target loss.

The quality benchmarks' yardstick: a LoRA adapter (r = 8) trained on the base toy model
with the selected examples only, then the mean completion loss on held-out examples of the
target's skill (lower is better). Seeded: the same training set gives the same loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from gradstore.config import LoraConfig
from gradstore.gradients import per_example_losses
from gradstore.modeling import attach_new_lora, load_base_model
from gradstore.tokenization import TokenizedExample, collate

BATCH_SIZE = 8


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
            batch = collate([train[i] for i in order[start : start + BATCH_SIZE]], pad)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            per_example_losses(logits.logits, batch["labels"]).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
    return model.eval()


@torch.no_grad()
def target_loss(model, evaluation: Sequence[TokenizedExample], pad: int) -> float:
    """Mean completion loss over the evaluation examples."""
    losses = []
    for start in range(0, len(evaluation), 64):
        batch = collate(evaluation[start : start + 64], pad)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        losses.append(per_example_losses(logits.logits, batch["labels"]))
    return float(torch.cat(losses).mean())


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
