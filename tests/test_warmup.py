"""LESS warmup: checked against a hand-written AdamW loop, the schedule, determinism, loss."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from gradstore.config import BuildConfig, LoraConfig, WarmupConfig
from gradstore.features.checkpoints import checkpoint_weights, load_adam_moments, load_checkpoints
from gradstore.features.modeling import (
    attach_new_lora,
    load_base_model,
    load_lora_adapter,
    lora_parameter_names,
)
from gradstore.features.tokenization import TokenizedExample, collate
from gradstore.features.warmup import micro_batch_step, run_warmup, warmup_plan, warmup_sample

PAD = 0  # the tiny byte tokenizer's <pad>


def pool(n: int, distinct: int | None = None) -> list[TokenizedExample]:
    """Random token IDs of different lengths, completion after the third token."""
    generator = torch.Generator().manual_seed(0)
    shapes = [
        torch.randint(10, 100, (6 + i % (distinct or n),), generator=generator).tolist()
        for i in range(distinct or n)
    ]
    return [
        TokenizedExample(f"e{i}", shapes[i % len(shapes)], [-100] * 3 + shapes[i % len(shapes)][3:])
        for i in range(n)
    ]


def config(**warmup) -> BuildConfig:
    settings = {"fraction": 1.0, "epochs": 2, "learning_rate": 1e-2, "warmup_ratio": 0.0}
    return BuildConfig(
        lora=LoraConfig(r=4, alpha=16, dropout=0.0), warmup=WarmupConfig(**(settings | warmup))
    )


@pytest.mark.parametrize(
    ("batch_size", "accumulation"),
    [(1, 4), (4, 1)],  # a mean of 4 one-example means / one token-mean over a padded batch
)
def test_warmup_equals_a_hand_written_adamw_loop(
    tiny_model_dir, tmp_path, batch_size, accumulation
):
    examples = pool(4)
    cfg = config(batch_size=batch_size, gradient_accumulation=accumulation)
    checkpoints = run_warmup(tiny_model_dir, examples, cfg, tmp_path, progress=False)

    # The reference: one optimizer step per epoch over all four examples, HF's own loss,
    # the learning rate of a linear decay from 1e-2 over 2 steps written out by hand.
    model = attach_new_lora(load_base_model(tiny_model_dir, "cpu"), cfg.lora, seed=0)
    names = lora_parameter_names(model)
    params = dict(model.named_parameters())
    optimizer = torch.optim.AdamW([params[n] for n in names], lr=1.0, weight_decay=0.0)
    rates = [1e-2, 5e-3]
    for epoch, rate in enumerate(rates, start=1):
        optimizer.param_groups[0]["lr"] = rate
        micro = [examples[i : i + batch_size] for i in range(0, 4, batch_size)]
        loss = sum(model(**collate(m, PAD)).loss for m in micro) / len(micro)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        checkpoint = checkpoints[epoch - 1]
        assert checkpoint.index == epoch and checkpoint.learning_rate == pytest.approx(rate)
        loaded = load_lora_adapter(load_base_model(tiny_model_dir, "cpu"), checkpoint.path)
        m, v = load_adam_moments(checkpoint.path, loaded)
        expected_m = torch.cat([optimizer.state[params[n]]["exp_avg"].reshape(-1) for n in names])
        expected_v = torch.cat(
            [optimizer.state[params[n]]["exp_avg_sq"].reshape(-1) for n in names]
        )
        # float32 sums in another order: equal up to rounding, relative to the whole vector
        assert (m - expected_m).norm() <= 1e-4 * expected_m.norm()
        assert (v - expected_v).norm() <= 1e-4 * expected_v.norm()
        assert m.abs().sum() > 0
        weights = dict(loaded.named_parameters())
        for name in names:
            torch.testing.assert_close(weights[name], params[name], rtol=1e-4, atol=1e-7)


def test_schedule_learning_rates_determinism_and_loss(tiny_model_dir, tmp_path):
    # 8 examples (2 distinct, repeated) / (2 per micro-batch × 2) → 2 steps an epoch, 6 in
    # all, ceil(0.03·6) = 1 warmup step, and LoRA dropout on.
    cfg = BuildConfig(
        lora=LoraConfig(r=4, alpha=16, dropout=0.1),
        warmup=WarmupConfig(
            fraction=1.0, epochs=3, learning_rate=1e-2, batch_size=2, gradient_accumulation=2
        ),
    )
    examples = pool(8, distinct=2)
    first = run_warmup(tiny_model_dir, examples, cfg, tmp_path / "a", progress=False)
    second = run_warmup(tiny_model_dir, examples, cfg, tmp_path / "b", progress=False)
    assert [c.index for c in first] == [1, 2, 3]
    assert load_checkpoints(tmp_path / "a") == first
    for a, b in zip(first, second, strict=True):
        for name in ("adapter_model.safetensors", "adam_moments.safetensors"):
            assert (a.path / name).read_bytes() == (b.path / name).read_bytes()
    # lr(step) = 1e-2·min(step/1, (6 − step)/5); the epochs average steps (0,1), (2,3), (4,5)
    lr = [1e-2 * (0 if s == 0 else (6 - s) / 5) for s in range(6)]
    expected = [(lr[0] + lr[1]) / 2, (lr[2] + lr[3]) / 2, (lr[4] + lr[5]) / 2]
    assert [c.learning_rate for c in first] == pytest.approx(expected)
    assert checkpoint_weights(first) == pytest.approx([r / sum(expected) for r in expected])
    log = json.loads((tmp_path / "a" / "warmup_log.json").read_text())
    assert [entry["epoch"] for entry in log] == [1, 2, 3]
    assert log[2]["loss"] < log[1]["loss"] < log[0]["loss"]
    # the checkpoints differ from epoch to epoch (training happened)
    a1, a3 = (load_file(str(c.path / "adapter_model.safetensors")) for c in (first[0], first[2]))
    assert any(not torch.equal(a1[k], a3[k]) for k in a1)
    # another seed, another run
    other = cfg.model_copy(update={"warmup": cfg.warmup.model_copy(update={"seed": 1})})
    third = run_warmup(tiny_model_dir, examples, other, tmp_path / "c", progress=False)
    assert (third[0].path / "adapter_model.safetensors").read_bytes() != (
        first[0].path / "adapter_model.safetensors"
    ).read_bytes()


def test_warmup_sample_is_seeded_and_recorded(tiny_model_dir, tmp_path):
    assert warmup_sample(100, 0.05, 0) == warmup_sample(100, 0.05, 0)
    assert len(warmup_sample(100, 0.05, 0)) == 5
    assert warmup_sample(100, 0.05, 1) != warmup_sample(100, 0.05, 0)
    assert warmup_sample(10, 0.001, 0) != [] and len(warmup_sample(10, 0.001, 0)) == 1
    examples = pool(10)
    run_warmup(tiny_model_dir, examples, config(fraction=0.3, epochs=1), tmp_path, progress=False)
    recorded = json.loads((tmp_path / "warmup_sample.json").read_text())
    assert recorded == [examples[i].id for i in warmup_sample(10, 0.3, 0)] and len(recorded) == 3


def test_tiny_data_still_makes_a_step_per_epoch():
    assert warmup_plan(3, batch_size=8, gradient_accumulation=16) == (1, 1)
    assert warmup_plan(40, batch_size=8, gradient_accumulation=16) == (5, 1)
    assert warmup_plan(40, batch_size=8, gradient_accumulation=2) == (2, 3)


def test_a_micro_batch_split_by_tokens_has_the_whole_micro_batch_gradient(tiny_model_dir):
    """HF's loss: the mean over all of the micro-batch's completion tokens, whatever pieces
    the token budget cuts it into."""
    model = attach_new_lora(load_base_model(tiny_model_dir, "cpu"), LoraConfig(r=4), seed=0)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # B starts at zero, which would zero every A gradient
            torch.nn.init.normal_(param, std=0.2)
    model.eval()  # no dropout: both sides see the same function
    examples = pool(6)
    batch = collate(examples, PAD)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    whole = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100
    )
    (whole * 0.5).backward()
    expected = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    loss = micro_batch_step(model, examples, PAD, torch.device("cpu"), 12, scale=0.5)
    assert loss == pytest.approx(whole.item(), rel=1e-5)
    got = [p.grad for p in model.parameters() if p.requires_grad]
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
