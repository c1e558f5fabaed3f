"""Warmup checkpoints: our format, the schedule, and import of reference-format runs."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_assets import save_tiny_llama

from gradstore.checkpoints import checkpoint_weights, load_adam_moments, load_checkpoints
from gradstore.config import BuildConfig, LoraConfig, WarmupConfig
from gradstore.errors import InvalidInputError
from gradstore.modeling import (
    attach_new_lora,
    load_base_model,
    load_lora_adapter,
    lora_parameter_names,
)
from gradstore.reference_import import epoch_learning_rates, import_reference_checkpoints
from gradstore.tokenization import TokenizedExample, collate
from gradstore.warmup import run_warmup, warmup_sample

CONFIG = BuildConfig(
    lora=LoraConfig(r=4, alpha=16, dropout=0.0),
    warmup=WarmupConfig(
        fraction=1.0, epochs=3, learning_rate=1e-2, batch_size=2, gradient_accumulation=2
    ),
)


def pool(n=8):
    generator = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        ids = torch.randint(10, 100, (6 + i,), generator=generator).tolist()
        out.append(TokenizedExample(f"e{i}", ids, [-100] * 3 + ids[3:]))
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("model"))


def test_warmup_writes_a_checkpoint_per_epoch_and_is_deterministic(model_dir, tmp_path):
    first = run_warmup(model_dir, pool(), CONFIG, tmp_path / "a", progress=False)
    second = run_warmup(model_dir, pool(), CONFIG, tmp_path / "b", progress=False)
    assert (
        [c.index for c in first] == [1, 2, 3] == [c.index for c in load_checkpoints(tmp_path / "a")]
    )
    for a, b in zip(first, second, strict=True):
        assert (a.path / "adapter_model.safetensors").read_bytes() == (
            b.path / "adapter_model.safetensors"
        ).read_bytes()
    # 8 examples / (2 per micro-batch × 2) → 2 steps an epoch, 6 in all, 1 warmup step:
    # lr(step) = 1e-2·min(step/1, (6 − step)/5); epochs average steps (0,1), (2,3), (4,5)
    lr = [1e-2 * (0 if s == 0 else (6 - s) / 5) for s in range(6)]
    expected = [(lr[0] + lr[1]) / 2, (lr[2] + lr[3]) / 2, (lr[4] + lr[5]) / 2]
    assert [c.learning_rate for c in first] == pytest.approx(expected)
    assert sum(checkpoint_weights(first)) == pytest.approx(1)
    log = json.loads((tmp_path / "a" / "warmup_log.json").read_text())
    assert log[-1]["loss"] < log[0]["loss"]
    model = load_lora_adapter(load_base_model(model_dir, "cpu"), first[-1].path)
    m, v = load_adam_moments(first[-1].path, model)
    assert m.shape == v.shape and m.abs().sum() > 0 and (v >= 0).all()


def test_warmup_sample_is_seeded():
    assert warmup_sample(100, 0.05, 0) == warmup_sample(100, 0.05, 0)
    assert len(warmup_sample(100, 0.05, 0)) == 5 and warmup_sample(100, 0.05, 1) != warmup_sample(
        100, 0.05, 0
    )


def reference_run(model_dir, out, epochs=2, index_keyed=False):
    """Train a few AdamW steps and save checkpoints the way the LESS reference does."""
    model = attach_new_lora(load_base_model(model_dir, "cpu"), CONFIG.lora, seed=0)
    params = [p for _, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    history, dirs = [], []
    for epoch in range(1, epochs + 1):
        for step, example in enumerate(pool(4)):
            batch = collate([example], 0)
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            history.append(
                {"epoch": epoch - 1 + (step + 1) / 4, "learning_rate": 1e-3 * (5 - step - epoch)}
            )
        directory = out / f"checkpoint-{4 * epoch}"
        model.save_pretrained(directory)
        if index_keyed:  # a plain HF Trainer: integer keys, decay group then no-decay group
            state = optimizer.state_dict()
            state["param_groups"] = [
                dict(state["param_groups"][0], params=list(range(len(params))), weight_decay=0.0),
                dict(state["param_groups"][0], params=[], weight_decay=0.0),
            ]
            torch.save(state, directory / "optimizer.pt")
        else:  # the reference: state keyed by parameter name
            names = lora_parameter_names(model)
            by_name = {n: optimizer.state[p] for n, p in zip(names, params, strict=True)}
            torch.save({"state": by_name}, directory / "optimizer.bin")
        (directory / "trainer_state.json").write_text(
            json.dumps(
                {"epoch": float(epoch), "global_step": 4 * epoch, "log_history": list(history)}
            )
        )
        dirs.append(directory)
    expected = {
        n: (optimizer.state[p]["exp_avg"].clone(), optimizer.state[p]["exp_avg_sq"].clone())
        for n, p in zip(lora_parameter_names(model), params, strict=True)
    }
    return dirs, expected, history


@pytest.mark.parametrize("index_keyed", [False, True])
def test_import_reference_checkpoints(model_dir, tmp_path, index_keyed):
    dirs, last_moments, history = reference_run(
        model_dir, tmp_path / "run", index_keyed=index_keyed
    )
    imported = import_reference_checkpoints(dirs[::-1], model_dir, tmp_path / "ours")
    assert [c.index for c in imported] == [1, 2]
    expected_rates = epoch_learning_rates(history)
    assert expected_rates[1] == pytest.approx((4 + 3 + 2 + 1) / 4 * 1e-3)
    assert [c.learning_rate for c in imported] == pytest.approx(
        [expected_rates[1], expected_rates[2]]
    )
    model = load_lora_adapter(load_base_model(model_dir, "cpu"), imported[-1].path)
    m, v = load_adam_moments(imported[-1].path, model)
    names = lora_parameter_names(model)
    torch.testing.assert_close(m, torch.cat([last_moments[n][0].reshape(-1) for n in names]))
    torch.testing.assert_close(v, torch.cat([last_moments[n][1].reshape(-1) for n in names]))


def test_import_rejects_a_foreign_optimizer(model_dir, tmp_path):
    dirs, _, _ = reference_run(model_dir, tmp_path / "run", epochs=1, index_keyed=True)
    state = torch.load(dirs[0] / "optimizer.pt", weights_only=True)
    state["param_groups"][0]["params"] = state["param_groups"][0]["params"][:-1]
    torch.save(state, dirs[0] / "optimizer.pt")
    with pytest.raises(InvalidInputError, match="was it trained on this model"):
        import_reference_checkpoints(dirs, model_dir, tmp_path / "ours")
