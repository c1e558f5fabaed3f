"""Warmup checkpoints: our on-disk format, and import of an existing LESS / HF-Trainer run.

A checkpoint directory ``ckpt-{i}/`` holds the PEFT adapter (``adapter_config.json``,
``adapter_model.safetensors``), the Adam moments keyed by parameter *name*
(``adam_moments.safetensors``: ``{name}.exp_avg``, ``{name}.exp_avg_sq``) and
``checkpoint.json`` with the epoch's mean learning rate. Names, not optimizer indices, so the
moments cannot silently pair with the wrong tensor (the reference's most reported issue).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from gradstore.errors import InvalidInputError
from gradstore.files import fsync_dir
from gradstore.modeling import lora_parameter_names

MOMENTS = "adam_moments.safetensors"
INFO = "checkpoint.json"


@dataclass(frozen=True)
class WarmupCheckpoint:
    index: int
    path: Path
    learning_rate: float


def _write_dir_atomically(final: Path, fill) -> None:
    """Fill a temporary sibling directory, fsync it, then rename it to ``final``."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        fill(tmp)
        for file in tmp.iterdir():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(final.parent)


def canonicalise_adapter_config(path: Path) -> None:
    """PEFT writes ``target_modules`` from a set, in hash order: sort it so bytes repeat."""
    config = json.loads(path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    path.write_text(json.dumps(config, indent=2, sort_keys=True))


def _save_moments(path: Path, moments: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    tensors = {}
    for name, (exp_avg, exp_avg_sq) in moments.items():
        tensors[f"{name}.exp_avg"] = exp_avg.detach().float().contiguous().cpu()
        tensors[f"{name}.exp_avg_sq"] = exp_avg_sq.detach().float().contiguous().cpu()
    save_file(tensors, str(path))


def save_checkpoint(
    model, optimizer: torch.optim.Optimizer, out_dir: Path, index: int, learning_rate: float
) -> WarmupCheckpoint:
    """Save adapter + name-keyed Adam moments + learning rate as ``out_dir/ckpt-{index}``."""
    params = dict(model.named_parameters())
    moments = {}
    for name in lora_parameter_names(model):
        state = optimizer.state.get(params[name], {})
        if "exp_avg" not in state:
            raise ValueError(f"the optimizer holds no Adam state for {name}")
        moments[name] = (state["exp_avg"], state["exp_avg_sq"])

    def fill(tmp: Path) -> None:
        model.save_pretrained(str(tmp), safe_serialization=True)
        canonicalise_adapter_config(tmp / "adapter_config.json")
        _save_moments(tmp / MOMENTS, moments)
        (tmp / INFO).write_text(json.dumps({"index": index, "learning_rate": learning_rate}))

    final = Path(out_dir) / f"ckpt-{index}"
    _write_dir_atomically(final, fill)
    return WarmupCheckpoint(index, final, learning_rate)


def load_checkpoints(root: Path) -> list[WarmupCheckpoint]:
    found = []
    for info in Path(root).glob("ckpt-*/" + INFO):
        data = json.loads(info.read_text())
        found.append(WarmupCheckpoint(data["index"], info.parent, data["learning_rate"]))
    return sorted(found, key=lambda c: c.index)


def load_adam_moments(checkpoint_dir: Path, model) -> tuple[torch.Tensor, torch.Tensor]:
    """(exp_avg, exp_avg_sq) flattened in canonical parameter order."""
    tensors = load_file(str(Path(checkpoint_dir) / MOMENTS))
    params = dict(model.named_parameters())
    firsts, seconds = [], []
    for name in lora_parameter_names(model):
        key = f"{name}.exp_avg"
        if key not in tensors:
            raise InvalidInputError(f"{checkpoint_dir}: no Adam moments for parameter {name}")
        if tensors[key].shape != params[name].shape:
            raise InvalidInputError(
                f"{checkpoint_dir}: Adam moment of {name} has shape {tuple(tensors[key].shape)}, "
                f"the parameter {tuple(params[name].shape)}"
            )
        firsts.append(tensors[key].reshape(-1))
        seconds.append(tensors[f"{name}.exp_avg_sq"].reshape(-1))
    return torch.cat(firsts).float(), torch.cat(seconds).float()


def checkpoint_weights(checkpoints: Sequence[WarmupCheckpoint]) -> list[float]:
    """η_i: each checkpoint's mean learning rate, normalised to sum to 1."""
    total = sum(c.learning_rate for c in checkpoints)
    if total <= 0:
        return [1.0 / len(checkpoints)] * len(checkpoints)
    return [c.learning_rate / total for c in checkpoints]
