"""LESS step 1: warm up a LoRA adapter on a seeded sample of the pool, a checkpoint per epoch.

AdamW without weight decay, a linear schedule with linear warmup over ``warmup_ratio`` of
the optimizer steps, gradient accumulation to the effective batch; after every epoch the
adapter, the Adam moments (by name) and the mean learning rate of that epoch's steps.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup

from gradstore.checkpoints import WarmupCheckpoint, save_checkpoint
from gradstore.config import BuildConfig
from gradstore.gradients import per_example_losses
from gradstore.modeling import attach_new_lora, load_base_model, load_tokenizer, resolve_device
from gradstore.tokenization import IGNORE_INDEX, TokenizedExample, collate, pad_token_id


def warmup_sample(n: int, fraction: float, seed: int) -> list[int]:
    """Rows of the warmup sample: ``round(fraction·n)`` (at least 1), seeded, sorted."""
    size = max(1, min(n, round(fraction * n)))
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n, generator=generator)[:size].tolist())


def run_warmup(
    model_dir: Path,
    pool: Sequence[TokenizedExample],
    config: BuildConfig,
    out_dir: Path,
    device: str | None = None,
    progress: bool = True,
) -> list[WarmupCheckpoint]:
    settings = config.warmup
    device_ = resolve_device(device)
    rows = warmup_sample(len(pool), settings.fraction, settings.seed)
    sample = [pool[i] for i in rows]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "warmup_sample.json").write_text(json.dumps([e.id for e in sample]))

    tokenizer = load_tokenizer(model_dir)
    pad = pad_token_id(tokenizer)
    model = attach_new_lora(load_base_model(model_dir, device_), config.lora, settings.seed)
    model.to(device_)
    micro_batches = math.ceil(len(sample) / settings.batch_size)
    accumulation = max(1, min(settings.gradient_accumulation, micro_batches))
    steps_per_epoch = math.ceil(micro_batches / accumulation)
    total_steps = steps_per_epoch * settings.epochs
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=settings.learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0
    )
    scheduler = get_linear_schedule_with_warmup(
        optimizer, math.ceil(settings.warmup_ratio * total_steps), total_steps
    )
    generator = torch.Generator().manual_seed(settings.seed)
    checkpoints, log = [], []
    bar = tqdm(total=total_steps, desc="warmup", unit="step", disable=not progress)
    for epoch in range(1, settings.epochs + 1):
        model.train()
        order = torch.randperm(len(sample), generator=generator).tolist()
        rates, losses = [], []
        for step in range(steps_per_epoch):
            first = step * accumulation * settings.batch_size
            chunk = order[first : first + accumulation * settings.batch_size]
            batches = [
                chunk[i : i + settings.batch_size]
                for i in range(0, len(chunk), settings.batch_size)
            ]
            tokens = sum(_target_tokens(sample, b) for b in batches)
            for batch_rows in batches:
                batch = collate([sample[i] for i in batch_rows], pad)
                batch = {k: v.to(device_) for k, v in batch.items()}
                logits = model(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                ).logits
                # token-mean over the effective batch, as a causal-LM loss over it would be
                per_example = per_example_losses(logits, batch["labels"])
                weights = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(dim=1)
                loss = (per_example * weights).sum() / tokens
                loss.backward()
                losses.append(loss.detach().item() * tokens / max(1, int(weights.sum())))
            rates.append(scheduler.get_last_lr()[0])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            bar.update(1)
        model.eval()
        mean_rate = sum(rates) / len(rates)
        checkpoints.append(save_checkpoint(model, optimizer, out_dir, epoch, mean_rate))
        log.append({"epoch": epoch, "loss": sum(losses) / len(losses), "learning_rate": mean_rate})
    bar.close()
    (out_dir / "warmup_log.json").write_text(json.dumps(log, indent=2))
    return checkpoints


def _target_tokens(sample: Sequence[TokenizedExample], rows: list[int]) -> int:
    return max(1, sum(sample[i].num_target_tokens for i in rows))
