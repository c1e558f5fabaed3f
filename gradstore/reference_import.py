"""Reuse a warmup that was already run with the LESS reference (or any HF Trainer + PEFT run).

Each given directory is a Trainer checkpoint (``checkpoint-105/``): a PEFT adapter, the Adam
state, and ``trainer_state.json``. The Adam state is either the reference's ``optimizer.bin``
keyed by parameter *name*, or a plain Trainer ``optimizer.pt`` keyed by optimizer *index*,
which we map to names the way the Trainer built its groups: trainable parameters in
``named_parameters`` order, split into weight-decay ones (all but biases and norm weights)
then the rest. Shapes are checked, so a wrong mapping fails loudly instead of silently.
η_i is the mean learning rate logged during checkpoint i's epoch.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from gradstore.checkpoints import (
    INFO,
    MOMENTS,
    WarmupCheckpoint,
    _save_moments,
    _write_dir_atomically,
    canonicalise_adapter_config,
)
from gradstore.errors import InvalidInputError
from gradstore.modeling import load_base_model, load_lora_adapter, lora_parameter_names

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def _trainer_state(directory: Path) -> dict:
    for candidate in (directory / "trainer_state.json", directory.parent / "trainer_state.json"):
        if candidate.exists():
            return json.loads(candidate.read_text())
    raise InvalidInputError(f"{directory}: no trainer_state.json (needed for learning rates)")


def epoch_learning_rates(log_history: list[dict]) -> dict[int, float]:
    """Mean logged learning rate of each epoch (entries with epoch in (i−1, i])."""
    per_epoch: dict[int, list[float]] = {}
    for entry in log_history:
        if "learning_rate" in entry and "epoch" in entry:
            epoch = max(1, math.ceil(float(entry["epoch"]) - 1e-9))
            per_epoch.setdefault(epoch, []).append(float(entry["learning_rate"]))
    return {epoch: sum(v) / len(v) for epoch, v in per_epoch.items()}


def trainer_group_order(model: nn.Module) -> list[list[str]]:
    """Parameter names per optimizer group as the HF Trainer builds them (decay, no decay)."""
    no_decay_modules = tuple(
        m for m in (nn.LayerNorm, getattr(nn, "RMSNorm", None)) if m is not None
    )
    no_decay = set()
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            norm_like = (
                isinstance(module, no_decay_modules) or "norm" in type(module).__name__.lower()
            )
            if param_name == "bias" or norm_like:
                no_decay.add(full)
    names = lora_parameter_names(model)
    return [[n for n in names if n not in no_decay], [n for n in names if n in no_decay]]


def _name_keyed_state(optimizer_file: Path, model: nn.Module) -> dict[str, dict]:
    raw = torch.load(optimizer_file, map_location="cpu", weights_only=True)
    state = raw.get("state", raw)
    names = lora_parameter_names(model)
    if all(isinstance(k, str) for k in state):
        return state
    # index-keyed (plain Trainer): map through the groups
    groups = raw.get("param_groups")
    if not groups:
        raise InvalidInputError(f"{optimizer_file}: index-keyed state without param_groups")
    ordered = trainer_group_order(model)
    named: dict[str, dict] = {}
    for group, group_names in zip(groups, ordered + [[]] * len(groups), strict=False):
        indices = group["params"]
        if len(indices) != len(group_names):
            raise InvalidInputError(
                f"{optimizer_file}: an optimizer group has {len(indices)} parameters, the "
                f"model's matching group {len(group_names)}; was it trained on this model?"
            )
        for index, name in zip(indices, group_names, strict=True):
            if index in state:
                named[name] = state[index]
    missing = [n for n in names if n not in named]
    if missing:
        raise InvalidInputError(f"{optimizer_file}: no Adam state for {missing[0]}")
    return named


def _moments(directory: Path, model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    for filename in ("optimizer.bin", "optimizer.pt"):
        if (directory / filename).exists():
            state = _name_keyed_state(directory / filename, model)
            break
    else:
        raise InvalidInputError(f"{directory}: neither optimizer.bin nor optimizer.pt")
    params = dict(model.named_parameters())
    moments = {}
    for name in lora_parameter_names(model):
        entry = state.get(name)
        if entry is None or "exp_avg" not in entry:
            raise InvalidInputError(f"{directory}: no Adam moments for parameter {name}")
        if tuple(entry["exp_avg"].shape) != tuple(params[name].shape):
            raise InvalidInputError(
                f"{directory}: Adam moment of {name} has shape {tuple(entry['exp_avg'].shape)}, "
                f"the parameter {tuple(params[name].shape)}"
            )
        moments[name] = (entry["exp_avg"], entry["exp_avg_sq"])
    return moments


def _copy_adapter(source: Path, target: Path) -> None:
    shutil.copyfile(source / "adapter_config.json", target / "adapter_config.json")
    canonicalise_adapter_config(target / "adapter_config.json")
    if (source / "adapter_model.safetensors").exists():
        shutil.copyfile(source / "adapter_model.safetensors", target / ADAPTER_FILES[1])
    elif (source / "adapter_model.bin").exists():
        weights = torch.load(source / "adapter_model.bin", map_location="cpu", weights_only=True)
        save_file({k: v.contiguous() for k, v in weights.items()}, str(target / ADAPTER_FILES[1]))
    else:
        raise InvalidInputError(f"{source}: no adapter_model.safetensors or adapter_model.bin")


def import_reference_checkpoints(
    directories: Sequence[Path], model_dir: Path, out_root: Path
) -> list[WarmupCheckpoint]:
    """Convert reference checkpoints into ours under ``out_root/ckpt-{epoch}``."""
    entries = []
    for directory in map(Path, directories):
        if not (directory / "adapter_config.json").exists():
            raise InvalidInputError(f"{directory}: not a PEFT adapter directory")
        state = _trainer_state(directory)
        epoch = max(1, round(float(state.get("epoch", len(entries) + 1))))
        rates = epoch_learning_rates(state.get("log_history", []))
        if epoch not in rates:
            raise InvalidInputError(
                f"{directory}: trainer_state.json logs no learning rate for epoch {epoch}"
            )
        entries.append((epoch, directory, rates[epoch]))
    if len({e for e, _, _ in entries}) != len(entries):
        raise InvalidInputError("two --warmup-from checkpoints are from the same epoch")
    checkpoints = []
    for epoch, directory, rate in sorted(entries):
        model = load_lora_adapter(load_base_model(model_dir, "cpu"), directory)
        moments = _moments(directory, model)

        def fill(tmp: Path, directory=directory, moments=moments, epoch=epoch, rate=rate) -> None:
            _copy_adapter(directory, tmp)
            _save_moments(tmp / MOMENTS, moments)
            (tmp / INFO).write_text(json.dumps({"index": epoch, "learning_rate": rate}))

        final = Path(out_root) / f"ckpt-{epoch}"
        _write_dir_atomically(final, fill)
        checkpoints.append(WarmupCheckpoint(epoch, final, rate))
    return checkpoints
