"""Warmup checkpoints: our on-disk format, and import of an existing LESS / HF-Trainer run.

A checkpoint directory ``ckpt-{i}/`` holds the PEFT adapter (``adapter_config.json``,
``adapter_model.safetensors``), the Adam moments keyed by parameter *name*
(``adam_moments.safetensors``: ``{name}.exp_avg``, ``{name}.exp_avg_sq``, float32) and
``checkpoint.json`` with the epoch's mean learning rate and the optimizer step count (the
bias corrections of Adam's update direction need it; checkpoints written before it was
recorded read as ``step=None``). Names, not optimizer indices, so the
moments cannot silently pair with the wrong tensor (the reference's most reported issue).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import pickle
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from gradstore.errors import InvalidInputError
from gradstore.features.modeling import lora_parameter_names
from gradstore.files import fsync_dir

MOMENTS = "adam_moments.safetensors"
INFO = "checkpoint.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass(frozen=True)
class WarmupCheckpoint:
    index: int  # 1-based epoch
    path: Path
    learning_rate: float  # mean learning rate of the epoch's optimizer steps, not normalised
    step: int | None = None  # optimizer steps taken so far; None in older checkpoints


# ---------------------------------------------------------------- our format


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):  # files before their directories
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        elif path.is_dir():
            fsync_dir(path)
    fsync_dir(root)


def _write_dir_atomically(final: Path, fill: Callable[[Path], None]) -> None:
    """Fill a temporary sibling directory, fsync it, then rename it to ``final``.

    A reader sees the old directory or the complete new one. Replacing an existing one takes
    two renames (the old one is moved aside first); a crash between them leaves the old one
    under ``.old-*``, never a half-written ``final``.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    old = None
    try:
        fill(tmp)
        _fsync_tree(tmp)
        if final.exists():
            old = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not final.exists():
            os.replace(old, final)
            old = None
        raise
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def canonicalise_adapter_config(path: Path) -> None:
    """PEFT writes ``target_modules`` from a set, in hash order: sort it so bytes repeat."""
    config = json.loads(Path(path).read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    Path(path).write_text(json.dumps(config, indent=2, sort_keys=True))


def _save_moments(path: Path, moments: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    tensors = {}
    for name, (exp_avg, exp_avg_sq) in moments.items():
        tensors[f"{name}.exp_avg"] = exp_avg.detach().float().contiguous().cpu()
        tensors[f"{name}.exp_avg_sq"] = exp_avg_sq.detach().float().contiguous().cpu()
    save_file(tensors, str(path))


def _write_info(directory: Path, index: int, learning_rate: float, step: int | None = None) -> None:
    info: dict = {"index": index, "learning_rate": learning_rate}
    if step is not None:
        info["step"] = int(step)
    (directory / INFO).write_text(json.dumps(info))


def optimizer_step(optimizer: torch.optim.Optimizer) -> int | None:
    """Steps the optimizer has taken (its per-parameter ``step``), None if it holds none."""
    for state in optimizer.state.values():
        if "step" in state:
            return int(torch.as_tensor(state["step"]).item())
    return None


def save_checkpoint(
    peft_model: nn.Module,
    optimizer: torch.optim.Optimizer,
    out_dir: Path,
    index: int,
    learning_rate: float,
) -> WarmupCheckpoint:
    """Save adapter + name-keyed Adam moments + learning rate as ``out_dir/ckpt-{index}``.

    The optimizer's state is keyed by the parameter tensors themselves, so each moment is
    paired with its name through the model's ``named_parameters`` (object identity).
    """
    params = dict(peft_model.named_parameters())
    moments = {}
    for name in lora_parameter_names(peft_model):
        state = optimizer.state.get(params[name], {})
        if "exp_avg" not in state or "exp_avg_sq" not in state:
            raise ValueError(f"the optimizer holds no Adam state for parameter {name}")
        moments[name] = (state["exp_avg"], state["exp_avg_sq"])

    def fill(tmp: Path) -> None:
        peft_model.save_pretrained(str(tmp), safe_serialization=True)  # type: ignore[operator]
        canonicalise_adapter_config(tmp / ADAPTER_CONFIG)
        _save_moments(tmp / MOMENTS, moments)
        _write_info(tmp, index, learning_rate, step)

    step = optimizer_step(optimizer)
    final = Path(out_dir) / f"ckpt-{index}"
    _write_dir_atomically(final, fill)
    return WarmupCheckpoint(index, final, float(learning_rate), step)


def load_checkpoints(root: Path) -> list[WarmupCheckpoint]:
    """Every complete ``ckpt-*`` under ``root``, sorted by index."""
    found = []
    for info in Path(root).glob(f"ckpt-*/{INFO}"):
        data = json.loads(info.read_text())
        directory = info.parent
        if directory.name != f"ckpt-{data['index']}":
            raise InvalidInputError(f"{directory}: checkpoint.json says index {data['index']}")
        for required in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, MOMENTS):
            if not (directory / required).exists():
                raise InvalidInputError(f"{directory}: {required} is missing")
        step = data.get("step")
        found.append(
            WarmupCheckpoint(
                int(data["index"]),
                directory,
                float(data["learning_rate"]),
                None if step is None else int(step),
            )
        )
    return sorted(found, key=lambda c: c.index)


def load_adam_moments(ckpt_path: Path, peft_model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(exp_avg, exp_avg_sq), float32, flattened and concatenated in canonical order."""
    tensors = load_file(str(Path(ckpt_path) / MOMENTS))
    params = dict(peft_model.named_parameters())
    names = lora_parameter_names(peft_model)
    extra = sorted({k.rsplit(".", 1)[0] for k in tensors} - set(names))
    if extra:
        raise InvalidInputError(
            f"{ckpt_path}: Adam moments for {len(extra)} parameter(s) the model does not train, "
            f"e.g. {extra[0]} (was the adapter made with other target modules?)"
        )
    firsts, seconds = [], []
    for name in names:
        for key in (f"{name}.exp_avg", f"{name}.exp_avg_sq"):
            if key not in tensors:
                raise InvalidInputError(
                    f"{ckpt_path}: no Adam moment {key.rsplit('.', 1)[1]} for parameter {name}"
                )
            if tensors[key].shape != params[name].shape:
                raise InvalidInputError(
                    f"{ckpt_path}: Adam moment of {name} has shape {tuple(tensors[key].shape)}, "
                    f"the parameter {tuple(params[name].shape)}"
                )
        firsts.append(tensors[f"{name}.exp_avg"].reshape(-1))
        seconds.append(tensors[f"{name}.exp_avg_sq"].reshape(-1))
    return torch.cat(firsts).float(), torch.cat(seconds).float()


def checkpoint_weights(ckpts: Sequence[WarmupCheckpoint]) -> list[float]:
    """η_i: each checkpoint's mean learning rate, normalised to sum to 1."""
    if not ckpts:
        return []
    if any(c.learning_rate < 0 for c in ckpts):
        raise InvalidInputError("a checkpoint has a negative learning rate")
    total = sum(c.learning_rate for c in ckpts)
    if total <= 0:
        return [1.0 / len(ckpts)] * len(ckpts)
    return [c.learning_rate / total for c in ckpts]


# ---------------------------------------------------------------- import of reference runs
# A LESS / HF-Trainer checkpoint (``checkpoint-105/``): a PEFT adapter, the Adam state, and
# ``trainer_state.json``. The Adam state is the reference's ``optimizer.bin`` keyed by
# parameter name, or a plain Trainer ``optimizer.pt`` keyed by index, which we map to names
# the way the Trainer built its groups. Shapes are checked so a wrong mapping fails loudly.

_NO_DECAY_PATTERNS = [
    re.compile(p)
    for p in (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")
]
_WRAPPER_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def epoch_learning_rates(log_history: Sequence[dict]) -> dict[int, float]:
    """Mean logged learning rate of each epoch i: entries with epoch in (i−1, i]."""
    per_epoch: dict[int, list[float]] = {}
    for entry in log_history:
        if "learning_rate" in entry and "epoch" in entry:
            epoch = max(1, math.ceil(float(entry["epoch"]) - 1e-6))
            per_epoch.setdefault(epoch, []).append(float(entry["learning_rate"]))
    return {epoch: sum(rates) / len(rates) for epoch, rates in per_epoch.items()}


def trainer_parameter_groups(model: nn.Module) -> tuple[list[str], list[str]]:
    """Trainable names split as the HF Trainer splits them: (weight decay, no weight decay).

    No decay: parameters inside a LayerNorm/RMSNorm module or whose name says bias or norm
    (the Trainer's rule; older versions' ``ALL_LAYERNORM_LAYERS`` + "bias" agree on LoRA).
    """
    norm_modules = {
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.LayerNorm) or type(module).__name__.lower().endswith("norm")
    }
    decay: list[str] = []
    no_decay: list[str] = []
    for name in lora_parameter_names(model):
        parts = name.split(".")
        inside_norm = any(".".join(parts[:i]) in norm_modules for i in range(1, len(parts)))
        by_name = any(p.search(name.lower()) for p in _NO_DECAY_PATTERNS)
        (no_decay if inside_norm or by_name else decay).append(name)
    return decay, no_decay


def _torch_load(path: Path) -> dict:
    """``weights_only`` loading: a checkpoint from elsewhere must not run code on unpickling."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InvalidInputError(
            f"{path} holds Python objects beyond tensors and containers, and we load optimizer "
            f"files only with torch.load(weights_only=True) so that it cannot run code: {exc}"
        ) from None


def _normalise_name(name: str, known: set[str]) -> str:
    """Strip FSDP / torch.compile wrapper parts from a saved parameter name."""
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    if name not in known and name.startswith("module."):
        name = name[len("module.") :]
    if name not in known and f"base_model.model.{name}" in known:
        name = f"base_model.model.{name}"
    return name


def _named_optimizer_state(path: Path, model: nn.Module) -> dict[str, dict]:
    raw = _torch_load(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("state"), dict):
        raise InvalidInputError(f"{path}: not an optimizer state dict (no 'state' mapping)")
    state = raw["state"]
    names = lora_parameter_names(model)
    if all(isinstance(key, str) for key in state):  # the reference: keyed by name
        known = set(names)
        return {_normalise_name(key, known): value for key, value in state.items()}
    groups = raw.get("param_groups")
    if not groups or not all(isinstance(key, int) for key in state):
        raise InvalidInputError(f"{path}: optimizer state keyed by neither names nor indices")
    sizes = [len(group["params"]) for group in groups]
    decay, no_decay = trainer_parameter_groups(model)
    if sizes == [len(decay), len(no_decay)]:
        order = decay + no_decay
    elif sizes == [len(names)]:
        order = names
    else:
        raise InvalidInputError(
            f"{path}: the optimizer groups hold {sizes} parameters, but this model's trainable "
            f"parameters split as the HF Trainer does are {[len(decay), len(no_decay)]}; was it "
            "trained on this base model with these LoRA settings?"
        )
    indices = [index for group in groups for index in group["params"]]
    return {
        name: state[index] for name, index in zip(order, indices, strict=True) if index in state
    }


def _moments(directory: Path, model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    for filename in ("optimizer.bin", "optimizer.pt"):
        if (directory / filename).exists():
            path = directory / filename
            break
    else:
        raise InvalidInputError(f"{directory}: neither optimizer.bin nor optimizer.pt")
    state = _named_optimizer_state(path, model)
    params = dict(model.named_parameters())
    moments = {}
    for name in lora_parameter_names(model):
        entry = state.get(name)
        if not isinstance(entry, dict) or "exp_avg" not in entry or "exp_avg_sq" not in entry:
            raise InvalidInputError(f"{path}: no Adam moments for parameter {name}")
        for key in ("exp_avg", "exp_avg_sq"):
            if tuple(entry[key].shape) != tuple(params[name].shape):
                raise InvalidInputError(
                    f"{path}: {key} of {name} has shape {tuple(entry[key].shape)}, the "
                    f"parameter {tuple(params[name].shape)}"
                )
        moments[name] = (entry["exp_avg"], entry["exp_avg_sq"])
    return moments


def _adapter_skeleton(model_dir: Path, adapter_dir: Path) -> nn.Module:
    """The PEFT model of ``adapter_dir`` on ``model_dir``, built on the meta device.

    Only the trainable names and shapes are needed, and they are those of
    ``load_lora_adapter``; the meta device makes that free even for a 7B base model.
    """
    from peft import PeftConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    peft_config = PeftConfig.from_pretrained(str(adapter_dir))
    peft_config.inference_mode = False
    with torch.device("meta"):
        return get_peft_model(AutoModelForCausalLM.from_config(config), peft_config)


def _trainer_state(directory: Path) -> tuple[dict, bool]:
    """``trainer_state.json`` of the checkpoint (True) or of its run directory (False)."""
    for candidate, own in (
        (directory / "trainer_state.json", True),
        (directory.parent / "trainer_state.json", False),
    ):
        if candidate.exists():
            return json.loads(candidate.read_text()), own
    raise InvalidInputError(f"{directory}: no trainer_state.json here or in the parent directory")


def _checkpoint_epoch(directory: Path, state: dict, own: bool) -> tuple[int, float]:
    """(global step, epoch) of a Trainer checkpoint."""
    match = re.fullmatch(r"checkpoint-(\d+)", directory.name)
    if own and "global_step" in state and "epoch" in state:
        return int(state["global_step"]), float(state["epoch"])
    if match is None:
        raise InvalidInputError(
            f"{directory}: cannot tell its step: no trainer_state.json of its own and the name "
            "is not checkpoint-<step>"
        )
    step = int(match.group(1))
    for entry in state.get("log_history", []):
        if entry.get("step") == step and "epoch" in entry:
            return step, float(entry["epoch"])
    if state.get("max_steps") and state.get("num_train_epochs"):
        return step, step * float(state["num_train_epochs"]) / float(state["max_steps"])
    raise InvalidInputError(
        f"{directory}: trainer_state.json does not say the epoch of step {step}"
    )


def _copy_adapter(source: Path, target: Path) -> None:
    shutil.copyfile(source / ADAPTER_CONFIG, target / ADAPTER_CONFIG)
    canonicalise_adapter_config(target / ADAPTER_CONFIG)
    if (source / ADAPTER_WEIGHTS).exists():
        shutil.copyfile(source / ADAPTER_WEIGHTS, target / ADAPTER_WEIGHTS)
    elif (source / "adapter_model.bin").exists():
        weights = _torch_load(source / "adapter_model.bin")
        save_file({k: v.contiguous() for k, v in weights.items()}, str(target / ADAPTER_WEIGHTS))
    else:
        raise InvalidInputError(f"{source}: no adapter_model.safetensors or adapter_model.bin")


def import_reference_checkpoints(
    ckpt_dirs: Sequence[Path], model_dir: Path, out_root: Path
) -> list[WarmupCheckpoint]:
    """Convert LESS / HF-Trainer checkpoints into ours under ``out_root/ckpt-{epoch}``.

    Each checkpoint's index is its epoch; η_i is the mean learning rate logged in epoch i.
    """
    entries = []
    for directory in map(Path, ckpt_dirs):
        if not (directory / ADAPTER_CONFIG).exists():
            raise InvalidInputError(f"{directory}: no adapter_config.json, not a PEFT checkpoint")
        state, own = _trainer_state(directory)
        step, epoch = _checkpoint_epoch(directory, state, own)
        index = round(epoch)
        if index < 1 or abs(epoch - index) > 0.01:
            raise InvalidInputError(
                f"{directory}: saved at epoch {epoch:.3f}, not at the end of an epoch; LESS "
                "needs one checkpoint per epoch"
            )
        rates = epoch_learning_rates(state.get("log_history", []))
        if index not in rates:
            raise InvalidInputError(
                f"{directory}: trainer_state.json logs no learning rate in epoch {index} "
                "(logging_steps longer than an epoch?)"
            )
        entries.append((index, step, directory, rates[index]))
    entries.sort(key=lambda e: (e[0], e[1]))
    for first, second in itertools.pairwise(entries):
        if first[0] == second[0]:
            raise InvalidInputError(f"{first[2]} and {second[2]} are both from epoch {first[0]}")

    checkpoints = []
    for index, step, directory, rate in entries:
        moments = _moments(directory, _adapter_skeleton(Path(model_dir), directory))

        def fill(
            tmp: Path, directory=directory, moments=moments, index=index, rate=rate, step=step
        ) -> None:
            _copy_adapter(directory, tmp)
            _save_moments(tmp / MOMENTS, moments)
            _write_info(tmp, index, rate, step)

        final = Path(out_root) / f"ckpt-{index}"
        _write_dir_atomically(final, fill)
        checkpoints.append(WarmupCheckpoint(index, final, rate, step))
    return checkpoints
