"""Our checkpoint format, and import of LESS-reference / plain HF-Trainer checkpoints."""

from __future__ import annotations

import json
import shutil
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model
from safetensors.torch import load_file
from transformers import Trainer

from gradstore.config import LoraConfig
from gradstore.errors import InvalidInputError
from gradstore.features.checkpoints import (
    WarmupCheckpoint,
    checkpoint_weights,
    epoch_learning_rates,
    import_reference_checkpoints,
    load_adam_moments,
    load_checkpoints,
    save_checkpoint,
)
from gradstore.features.modeling import (
    attach_new_lora,
    load_base_model,
    load_lora_adapter,
    lora_parameter_names,
)
from gradstore.features.tokenization import TokenizedExample, collate

LORA = LoraConfig(r=4, alpha=16, dropout=0.0)
STEPS_PER_EPOCH = 4


def examples(n: int = STEPS_PER_EPOCH) -> list[TokenizedExample]:
    generator = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        ids = torch.randint(10, 100, (6 + i,), generator=generator).tolist()
        out.append(TokenizedExample(f"e{i}", ids, [-100] * 3 + ids[3:]))
    return out


def train(model, optimizer, steps: int) -> None:
    for step in range(steps):
        model(**collate([examples()[step % STEPS_PER_EPOCH]], 0)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def moments_of(model, optimizer) -> tuple[torch.Tensor, torch.Tensor]:
    params = dict(model.named_parameters())
    names = lora_parameter_names(model)
    return tuple(
        torch.cat([optimizer.state[params[n]][key].reshape(-1) for n in names])
        for key in ("exp_avg", "exp_avg_sq")
    )


# ---------------------------------------------------------------- our format


def test_save_and_load_round_trip_is_exact(tiny_model_dir, tmp_path):
    model = attach_new_lora(load_base_model(tiny_model_dir, "cpu"), LORA, seed=0)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0
    )
    with pytest.raises(ValueError, match="no Adam state for parameter base_model"):
        save_checkpoint(model, optimizer, tmp_path, 1, 1e-3)
    train(model, optimizer, 2)
    saved = save_checkpoint(model, optimizer, tmp_path, 2, 1.5e-3)
    steps = int(optimizer.state[next(iter(optimizer.state))]["step"])
    assert saved == WarmupCheckpoint(2, tmp_path / "ckpt-2", 1.5e-3, steps)
    assert json.loads((saved.path / "checkpoint.json").read_text()) == {
        "index": 2,
        "learning_rate": 1.5e-3,
        "step": steps,
    }
    train(model, optimizer, 1)
    first = save_checkpoint(model, optimizer, tmp_path, 1, 2e-3)
    assert load_checkpoints(tmp_path) == [first, saved]
    train(model, optimizer, 1)
    again = save_checkpoint(model, optimizer, tmp_path, 1, 3e-3)  # replaces ckpt-1 whole
    assert load_checkpoints(tmp_path) == [again, saved]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-1", "ckpt-2"]  # no leftovers
    # a checkpoint written before the step was recorded still loads, its step unknown
    info = saved.path / "checkpoint.json"
    info.write_text(json.dumps({"index": 2, "learning_rate": 1.5e-3}))
    assert load_checkpoints(tmp_path)[1] == WarmupCheckpoint(2, saved.path, 1.5e-3, None)

    loaded = load_lora_adapter(load_base_model(tiny_model_dir, "cpu"), again.path)
    m, v = load_adam_moments(again.path, loaded)
    expected_m, expected_v = moments_of(model, optimizer)
    assert torch.equal(m, expected_m) and torch.equal(v, expected_v)
    assert m.dtype == v.dtype == torch.float32 and m.abs().sum() > 0
    for name, param in loaded.named_parameters():
        if param.requires_grad:
            assert torch.equal(param, dict(model.named_parameters())[name])
    keys = set(load_file(str(again.path / "adam_moments.safetensors")))
    assert keys == {
        f"{n}.{k}" for n in lora_parameter_names(model) for k in ("exp_avg", "exp_avg_sq")
    }


def test_moments_of_another_adapter_are_refused(tiny_model_dir, tmp_path):
    model = attach_new_lora(load_base_model(tiny_model_dir, "cpu"), LORA, seed=0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    train(model, optimizer, 1)
    saved = save_checkpoint(model, optimizer, tmp_path, 1, 1e-3)
    wider = attach_new_lora(load_base_model(tiny_model_dir, "cpu"), LoraConfig(r=8), seed=0)
    with pytest.raises(InvalidInputError, match=r"lora_A\.default\.weight has shape \(4, 32\)"):
        load_adam_moments(saved.path, wider)
    fewer = attach_new_lora(
        load_base_model(tiny_model_dir, "cpu"),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
        seed=0,
    )
    with pytest.raises(InvalidInputError, match=r"k_proj.*other target modules"):
        load_adam_moments(saved.path, fewer)
    more = attach_new_lora(
        load_base_model(tiny_model_dir, "cpu"),
        LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"]),
        seed=0,
    )
    with pytest.raises(InvalidInputError, match=r"no Adam moment exp_avg for parameter .*up_proj"):
        load_adam_moments(saved.path, more)


def test_checkpoint_weights():
    ckpts = [WarmupCheckpoint(i, Path(f"ckpt-{i}"), lr) for i, lr in [(1, 3.0), (2, 1.0)]]
    assert checkpoint_weights(ckpts) == [0.75, 0.25]
    assert checkpoint_weights([]) == []
    zeros = [WarmupCheckpoint(i, Path("x"), 0.0) for i in (1, 2)]
    assert checkpoint_weights(zeros) == [0.5, 0.5]


# ---------------------------------------------------------------- reference import


def linear_rate(step: int, total: int = 2 * STEPS_PER_EPOCH, peak: float = 2e-5) -> float:
    return peak * (total - step) / total


def reference_run(
    model_dir: Path,
    out: Path,
    optimizer_format: str,
    modules_to_save: bool = False,
    state_in_parent: bool = False,
    adapter_bin: bool = False,
):
    """Two epochs of AdamW as the HF Trainer runs them, checkpoints saved the reference's way.

    ``optimizer.bin``: the reference's state keyed by parameter name;
    ``optimizer.pt``: a plain Trainer's ``optimizer.state_dict()``, keyed by index, two groups.
    Returns the checkpoint dirs, the moments by name at each, and the log history.
    """
    base = load_base_model(model_dir, "cpu")
    config = PeftLoraConfig(
        r=4,
        lora_alpha=16,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        modules_to_save=["norm"] if modules_to_save else None,  # trainable norms: no decay
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(0)
    model = get_peft_model(base, config)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = set(Trainer.get_decay_parameter_names(None, model))  # the Trainer's own rule
    groups = [
        {"params": [p for n, p in named if n in decay], "weight_decay": 0.0},
        {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
    ]
    if modules_to_save:
        assert groups[1]["params"] and groups[0]["params"]
    optimizer = torch.optim.AdamW(groups, lr=2e-5)
    run = out / "run"
    history, dirs, moments = [], [], []
    for epoch in (1, 2):
        for _ in range(STEPS_PER_EPOCH):
            train(model, optimizer, 1)
            step = len(history) // 2 + 1
            history.append(
                {
                    "epoch": step / STEPS_PER_EPOCH,
                    "step": step,
                    "loss": 1.0,
                    "grad_norm": 0.1,
                    "learning_rate": linear_rate(step),
                }  # the Trainer logs the next step's rate
            )
            history.append({"epoch": step / STEPS_PER_EPOCH, "step": step, "eval_loss": 0.5})
        directory = run / f"checkpoint-{epoch * STEPS_PER_EPOCH}"
        model.save_pretrained(directory, safe_serialization=not adapter_bin)
        if optimizer_format == "bin":
            state = {n: dict(optimizer.state[p]) for n, p in named}
            torch.save({"state": state, "param_groups": []}, directory / "optimizer.bin")
        else:
            torch.save(optimizer.state_dict(), directory / "optimizer.pt")
        trainer_state = {
            "epoch": float(epoch),
            "global_step": epoch * STEPS_PER_EPOCH,
            "max_steps": 2 * STEPS_PER_EPOCH,
            "num_train_epochs": 2,
            "log_history": list(history),
        }
        if not state_in_parent:
            (directory / "trainer_state.json").write_text(json.dumps(trainer_state))
        dirs.append(directory)
        moments.append(
            {
                n: tuple(optimizer.state[p][k].clone() for k in ("exp_avg", "exp_avg_sq"))
                for n, p in named
            }
        )
    if state_in_parent:
        history.append({"epoch": 2.0, "step": 8, "train_runtime": 1.0, "train_loss": 1.0})
        (run / "trainer_state.json").write_text(
            json.dumps({"epoch": 2.0, "global_step": 8, "log_history": history})
        )
    return dirs, moments


CASES = {
    "reference optimizer.bin": {"optimizer_format": "bin"},
    "trainer optimizer.pt": {"optimizer_format": "pt"},
    "optimizer.pt, trainable norms": {"optimizer_format": "pt", "modules_to_save": True},
    "state in run dir, adapter .bin": {
        "optimizer_format": "pt",
        "state_in_parent": True,
        "adapter_bin": True,
    },
}


@pytest.mark.parametrize("case", list(CASES))
def test_import_reference_checkpoints(tiny_model_dir, tmp_path, case):
    dirs, moments = reference_run(tiny_model_dir, tmp_path, **CASES[case])
    imported = import_reference_checkpoints(dirs[::-1], tiny_model_dir, tmp_path / "ours")
    assert [c.index for c in imported] == [1, 2]
    assert load_checkpoints(tmp_path / "ours") == imported
    # η_i: the mean of the rates logged at steps 1..4 and 5..8, by hand
    assert imported[0].learning_rate == pytest.approx(sum(linear_rate(s) for s in (1, 2, 3, 4)) / 4)
    assert imported[1].learning_rate == pytest.approx(sum(linear_rate(s) for s in (5, 6, 7, 8)) / 4)
    for checkpoint, expected in zip(imported, moments, strict=True):
        model = load_lora_adapter(load_base_model(tiny_model_dir, "cpu"), checkpoint.path)
        names = lora_parameter_names(model)
        assert set(names) == set(expected)
        m, v = load_adam_moments(checkpoint.path, model)
        assert torch.equal(m, torch.cat([expected[n][0].reshape(-1) for n in names]))
        assert torch.equal(v, torch.cat([expected[n][1].reshape(-1) for n in names]))


def test_epoch_learning_rates_takes_the_half_open_epoch():
    history = [
        {"epoch": 0.5, "learning_rate": 1.0},
        {"epoch": 1.0, "learning_rate": 3.0},
        {"epoch": 1.0, "eval_loss": 9.0},
        {"epoch": 1.5, "learning_rate": 4.0},
        {"epoch": 2.0, "learning_rate": 2.0},
        {"epoch": 2.0, "train_runtime": 1.0},
    ]
    assert epoch_learning_rates(history) == {1: 2.0, 2: 3.0}


def test_import_rejects_a_foreign_optimizer(tiny_model_dir, tmp_path):
    dirs, _ = reference_run(tiny_model_dir, tmp_path, "pt")
    state = torch.load(dirs[0] / "optimizer.pt", weights_only=True)
    state["param_groups"][0]["params"] = state["param_groups"][0]["params"][:-1]
    torch.save(state, dirs[0] / "optimizer.pt")
    with pytest.raises(InvalidInputError, match="was it trained on this base model"):
        import_reference_checkpoints(dirs, tiny_model_dir, tmp_path / "ours")

    state = torch.load(dirs[1] / "optimizer.pt", weights_only=True)
    first, second = state["param_groups"][0]["params"][:2]  # lora_A and lora_B of q_proj
    state["state"][first], state["state"][second] = state["state"][second], state["state"][first]
    torch.save(state, dirs[1] / "optimizer.pt")
    with pytest.raises(InvalidInputError, match=r"exp_avg of .*q_proj\.lora_A.* has shape"):
        import_reference_checkpoints(dirs[1:], tiny_model_dir, tmp_path / "ours")


def test_import_refuses_pickled_objects_and_mid_epoch_checkpoints(tiny_model_dir, tmp_path):
    dirs, _ = reference_run(tiny_model_dir, tmp_path, "bin")
    state = torch.load(dirs[0] / "optimizer.bin", weights_only=True)
    state["extra"] = OrderedDict(a=Path("x"))  # a Path is not an allowed type
    torch.save(state, dirs[0] / "optimizer.bin")
    with pytest.raises(InvalidInputError, match="weights_only=True"):
        import_reference_checkpoints(dirs[:1], tiny_model_dir, tmp_path / "ours")

    mid = dirs[1].parent / "checkpoint-6"
    shutil.copytree(dirs[1], mid)
    trainer_state = json.loads((mid / "trainer_state.json").read_text())
    trainer_state.update(epoch=1.5, global_step=6)
    (mid / "trainer_state.json").write_text(json.dumps(trainer_state))
    with pytest.raises(InvalidInputError, match="not at the end of an epoch"):
        import_reference_checkpoints([mid], tiny_model_dir, tmp_path / "ours")
    with pytest.raises(InvalidInputError, match="both from epoch 2"):
        import_reference_checkpoints([dirs[1], dirs[1]], tiny_model_dir, tmp_path / "ours")
