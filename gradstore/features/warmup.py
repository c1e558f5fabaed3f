"""LESS step 1: warm up a LoRA adapter on a seeded sample of the pool, a checkpoint per epoch.

As the reference (HF Trainer): AdamW (β = 0.9, 0.999, ε = 1e-8) without weight decay, a
linear schedule with linear warmup over ``ceil(warmup_ratio · steps)`` steps, LoRA dropout
on. Each micro-batch's loss is the mean cross-entropy over its completion tokens (HF's
causal-LM loss) and an optimizer step averages the micro-batch losses it accumulated, as the
Trainer of the reference's time did. After each epoch: the adapter, the Adam moments (by
name) and the mean learning rate of that epoch's optimizer steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup

from gradstore.config import BuildConfig
from gradstore.features.batching import pack
from gradstore.features.checkpoints import WarmupCheckpoint, save_checkpoint
from gradstore.features.losses import completion_loss_sums
from gradstore.features.modeling import (
    attach_new_lora,
    load_base_model,
    load_tokenizer,
    resolve_device,
)
from gradstore.features.tokenization import TokenizedExample, collate, pad_token_id
from gradstore.files import atomic_write_json


def warmup_sample(n: int, fraction: float, seed: int) -> list[int]:
    """Rows of the warmup sample: ``round(fraction·n)`` (at least 1), seeded, sorted."""
    size = max(1, min(n, round(fraction * n)))
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n, generator=generator)[:size].tolist())


def warmup_plan(num_examples: int, batch_size: int, gradient_accumulation: int) -> tuple[int, int]:
    """(micro-batches per optimizer step, optimizer steps per epoch).

    Accumulation is clamped to the micro-batches an epoch has, so a tiny sample still makes
    at least one optimizer step per epoch; the last step of an epoch may accumulate fewer.
    """
    micro_batches = math.ceil(num_examples / batch_size)
    accumulation = max(1, min(gradient_accumulation, micro_batches))
    return accumulation, math.ceil(micro_batches / accumulation)


def micro_batch_step(
    model: torch.nn.Module,
    examples: Sequence[TokenizedExample],
    pad: int,
    device: torch.device,
    batch_tokens: int,
    scale: float,
) -> float | None:
    """Backward of ``scale`` × the micro-batch's loss; returns that loss (None: no label).

    The loss is HF's causal-LM loss, the mean cross-entropy over all of the micro-batch's
    completion tokens. Rows run in pieces of at most ``batch_tokens`` padded tokens, each
    piece's token sum divided by the whole micro-batch's token count, so the accumulated
    gradient is the micro-batch's whatever the pieces.
    """
    total = sum(e.num_target_tokens for e in examples)
    if total == 0:
        return None  # no completion token: nothing to learn, and no NaN
    lengths = [len(e.input_ids) for e in examples]
    loss = 0.0
    for rows in pack(range(len(examples)), lengths, len(examples), batch_tokens):
        batch = collate([examples[i] for i in rows], pad)
        sums, _ = completion_loss_sums(model, {k: v.to(device) for k, v in batch.items()})
        piece = sums.sum() / total
        (piece * scale).backward()
        loss += piece.item()
    return loss


def run_warmup(
    model_dir: Path,
    pool: Sequence[TokenizedExample],
    config: BuildConfig,
    out_dir: Path,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> list[WarmupCheckpoint]:
    """Train the warmup LoRA and save ``out_dir/ckpt-{epoch}`` after every epoch.

    Also writes ``warmup_sample.json`` (the IDs trained on) and ``warmup_log.json`` (loss and
    mean learning rate per epoch). The run is a function of the seed: same inputs, same bytes.
    """
    if not pool:
        raise ValueError("the warmup needs at least one example")
    settings = config.warmup
    device_ = resolve_device(device)
    sample = [pool[i] for i in warmup_sample(len(pool), settings.fraction, settings.seed)]
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "warmup_sample.json", [e.id for e in sample])

    pad = pad_token_id(load_tokenizer(model_dir))
    model = attach_new_lora(load_base_model(model_dir, device_), config.lora, settings.seed)
    accumulation, steps_per_epoch = warmup_plan(
        len(sample), settings.batch_size, settings.gradient_accumulation
    )
    total_steps = steps_per_epoch * settings.epochs
    optimizer = torch.optim.AdamW(
        [p for _, p in model.named_parameters() if p.requires_grad],
        lr=settings.learning_rate,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.0,
    )
    scheduler = get_linear_schedule_with_warmup(
        optimizer, math.ceil(settings.warmup_ratio * total_steps), total_steps
    )
    order_rng = torch.Generator().manual_seed(settings.seed)
    checkpoints, log = [], []
    rng_devices = [device_.index or 0] if device_.type == "cuda" else []
    bar = tqdm(total=total_steps, desc="warmup", unit="step", disable=not progress)
    with torch.random.fork_rng(devices=rng_devices):  # LoRA dropout masks follow the seed
        torch.manual_seed(settings.seed)
        for epoch in range(1, settings.epochs + 1):
            model.train()
            order = torch.randperm(len(sample), generator=order_rng).tolist()
            rates, losses = [], []
            for step in range(steps_per_epoch):
                span = accumulation * settings.batch_size
                rows = order[step * span : (step + 1) * span]
                micro = [
                    rows[i : i + settings.batch_size]
                    for i in range(0, len(rows), settings.batch_size)
                ]
                for batch_rows in micro:
                    loss = micro_batch_step(
                        model, [sample[i] for i in batch_rows], pad, device_, config.batch_tokens,
                        scale=1 / len(micro),
                    )  # fmt: skip
                    if loss is not None:
                        losses.append(loss)
                rates.append(scheduler.get_last_lr()[0])  # the rate this step uses
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                bar.update(1)
            model.eval()
            mean_rate = sum(rates) / len(rates)
            checkpoints.append(save_checkpoint(model, optimizer, out_dir, epoch, mean_rate))
            mean_loss = sum(losses) / len(losses) if losses else float("nan")
            log.append({"epoch": epoch, "loss": mean_loss, "learning_rate": mean_rate})
            bar.set_postfix(epoch=epoch, loss=f"{mean_loss:.4f}")
    bar.close()
    atomic_write_json(out_dir / "warmup_log.json", log)
    return checkpoints
