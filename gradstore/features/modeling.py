"""Loading local Hugging Face causal LMs and attaching LoRA adapters.

Nothing is fetched from a hub: every path must be a local directory that
``from_pretrained`` can read. Models are fp32 on CPU and bf16 on CUDA, in eval mode.

PEFT injects LoRA layers into the base model *in place*, so one base model carries at most
one adapter here: ``load_lora_adapter`` refuses a base that already has LoRA layers (a second
load would silently stack adapters). To visit many checkpoints, load a fresh base per
adapter, or keep one PEFT model and copy each checkpoint's tensors in
(``gradstore.features.checkpoint_model.CheckpointModel``).
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.pytorch_utils import Conv1D
from transformers.utils import logging as hf_logging

from gradstore.config import LoraConfig
from gradstore.errors import InvalidInputError

# Our commands and logs show their own progress: transformers' bars ("Loading weights",
# "Writing model shards") interleave with them and with the service's JSON log lines, and
# peft reads a property transformers deprecated (a FutureWarning on every adapter load that
# says nothing about the user's run).
hf_logging.disable_progress_bar()
warnings.filterwarnings(
    "ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning
)

# LESS adapts the attention projections; these are their names per model family.
_LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj"]
_LLAMA_LIKE_TYPES = {
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen2_moe",
    "qwen3",
    "qwen3_moe",
    "gemma",
    "gemma2",
    "gemma3_text",
    "olmo",
    "olmo2",
    "granite",
    "smollm3",
}
_TARGETS_BY_TYPE = {
    # GPT-2's MLP has a ``c_proj`` too: the ``attn.`` prefix keeps LoRA on attention only.
    "gpt2": ["attn.c_attn", "attn.c_proj"],
    "gpt_neox": ["query_key_value", "dense"],
    "falcon": ["query_key_value", "dense"],
    "bloom": ["query_key_value", "dense"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense"],
    "phi3": ["qkv_proj", "o_proj"],
}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The device asked for, else CUDA when there is one, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"device {device!r} asked for, but CUDA is not available here")
    return resolved


def _local_dir(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise InvalidInputError(
            f"model path {str(path)!r} is not a local directory (nothing is fetched from a hub)"
        )
    if not (path / "config.json").exists() and not (path / "tokenizer_config.json").exists():
        raise InvalidInputError(f"{path} has no config.json: not a Hugging Face model directory")
    return path


def load_tokenizer(model_dir: str | Path):
    return AutoTokenizer.from_pretrained(str(_local_dir(model_dir)), local_files_only=True)


def load_base_model(
    model_dir: str | Path, device: str | torch.device | None = None
) -> PreTrainedModel:
    """The frozen base model: fp32 on CPU, bf16 on CUDA, eval mode."""
    device = resolve_device(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        str(_local_dir(model_dir)), dtype=dtype, local_files_only=True
    )
    model.requires_grad_(False)
    return model.to(device).eval()  # type: ignore[arg-type]  # transformers' stub of .to


def default_target_modules(model: nn.Module) -> list[str]:
    """The attention projections of the model's family, found by config or by module names."""
    model_type = getattr(getattr(model, "config", None), "model_type", "") or ""
    if model_type in _LLAMA_LIKE_TYPES:
        return list(_LLAMA_LIKE)
    if model_type in _TARGETS_BY_TYPE:
        return list(_TARGETS_BY_TYPE[model_type])
    linear_names = {
        name for name, module in model.named_modules() if isinstance(module, nn.Linear | Conv1D)
    }
    for targets in [_LLAMA_LIKE, *_TARGETS_BY_TYPE.values()]:
        if all(any(matches_target(name, t) for name in linear_names) for t in targets):
            return list(targets)
    raise InvalidInputError(
        f"cannot choose LoRA target modules for model type {model_type!r}: none of the known "
        "attention projection names (q_proj/k_proj/v_proj/o_proj, c_attn/c_proj, "
        "query_key_value/dense, ...) is among its linear layers; give lora.target_modules"
    )


def matches_target(module_name: str, target: str) -> bool:
    """PEFT's rule for a list of target names: the module name ends with ``.target``."""
    return module_name == target or module_name.endswith("." + target)


def attach_new_lora(model: PreTrainedModel, lora: LoraConfig, seed: int) -> PeftModel:
    """A fresh LoRA adapter whose initial weights depend only on ``seed``.

    The global RNG is restored afterwards, so attaching does not perturb the caller's stream.
    """
    targets = list(lora.target_modules or default_target_modules(model))
    conv1d = any(
        isinstance(module, Conv1D) and any(matches_target(name, t) for t in targets)
        for name, module in model.named_modules()
    )
    config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,  # type: ignore[arg-type]  # PEFT annotates int, scales alpha/r
        lora_dropout=lora.dropout,
        target_modules=targets,
        fan_in_fan_out=conv1d,  # GPT-2's Conv1D stores its weight transposed
        task_type="CAUSAL_LM",
    )
    # PEFT creates and initialises the LoRA weights on the CPU, then moves them to the base
    # layer's device: seeding the CPU generator makes the init the same on every device.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, config)


def has_lora_layers(model: nn.Module) -> bool:
    return any(isinstance(module, BaseTunerLayer) for module in model.modules())


def load_lora_adapter(
    base_model: PreTrainedModel, adapter_dir: str | Path, trainable: bool = True
) -> PeftModel:
    """A saved adapter on ``base_model`` in eval mode; with ``trainable`` its LoRA weights
    require grad (featurisation differentiates through them, dropout stays off).

    ``base_model`` must be fresh (see the module docstring): PEFT mutates it.
    """
    if isinstance(base_model, PeftModel) or has_lora_layers(base_model):
        raise InvalidInputError(
            "the base model already carries LoRA layers (PEFT injects them in place); load a "
            "fresh base model with load_base_model for each adapter"
        )
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").exists():
        raise InvalidInputError(f"{adapter_dir} has no adapter_config.json: not a PEFT adapter")
    model = PeftModel.from_pretrained(base_model, str(adapter_dir), is_trainable=trainable)
    return model.eval()


def lora_parameter_names(model: nn.Module) -> list[str]:
    """The canonical order of every flattened gradient and Adam moment in the project."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def model_content_hash(model_dir: str | Path) -> str:
    """sha256 over every file of the model directory: relative path, size and bytes of each,
    in sorted path order (the size delimits one file's bytes from the next path)."""
    root = _local_dir(model_dir)
    digest = hashlib.sha256()
    files = {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}
    for relative_name in sorted(files):
        path, relative = files[relative_name], relative_name.encode()
        digest.update(len(relative).to_bytes(8, "little") + relative)
        digest.update(path.stat().st_size.to_bytes(8, "little"))
        with open(path, "rb") as handle:
            hashlib.file_digest(handle, lambda: digest)  # feeds the file into ``digest``
    return digest.hexdigest()
