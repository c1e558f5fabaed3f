"""Loading local Hugging Face causal LMs and attaching LoRA adapters.

Nothing is fetched from a hub: every path must be a local directory that
``from_pretrained`` can read. Models are fp32 on CPU and bf16 on CUDA, in eval mode.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from gradstore.config import LoraConfig
from gradstore.errors import InvalidInputError

# Attention projections to adapt, by model family (LESS adapts q/k/v/o).
_TARGETS_BY_TYPE = {
    "gpt2": ["c_attn", "c_proj"],
    "gpt_neox": ["query_key_value", "dense"],
    "falcon": ["query_key_value", "dense"],
    "bloom": ["query_key_value", "dense"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense"],
}
_LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj"]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _local_dir(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise InvalidInputError(f"model path {path} is not a local directory")
    if not (path / "config.json").exists() and not (path / "tokenizer_config.json").exists():
        raise InvalidInputError(f"{path} has no config.json: not a Hugging Face model directory")
    return path


def load_tokenizer(model_dir: str | Path):
    return AutoTokenizer.from_pretrained(str(_local_dir(model_dir)), local_files_only=True)


def load_base_model(model_dir: str | Path, device: str | torch.device | None = None):
    """The frozen base model: fp32 on CPU, bf16 on CUDA, eval mode."""
    device = resolve_device(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        str(_local_dir(model_dir)), dtype=dtype, local_files_only=True
    )
    model.requires_grad_(False)
    return model.to(device).eval()


def default_target_modules(model: PreTrainedModel) -> list[str]:
    """The attention projections of the model's family, found by config or by module names."""
    model_type = getattr(model.config, "model_type", "")
    if model_type in _TARGETS_BY_TYPE:
        return list(_TARGETS_BY_TYPE[model_type])
    leaf_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if set(_LLAMA_LIKE) <= leaf_names:  # llama, mistral, qwen2/3, gemma, ...
        return list(_LLAMA_LIKE)
    for targets in _TARGETS_BY_TYPE.values():
        if set(targets) <= leaf_names:
            return list(targets)
    raise InvalidInputError(
        f"cannot choose LoRA target modules for model type {model_type!r}; "
        "give lora.target_modules explicitly"
    )


def attach_new_lora(model: PreTrainedModel, lora: LoraConfig, seed: int) -> PeftModel:
    """A fresh LoRA adapter, initialised from ``seed``."""
    torch.manual_seed(seed)
    config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules or default_target_modules(model),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def load_lora_adapter(base_model: PreTrainedModel, adapter_dir: str | Path) -> PeftModel:
    """A saved adapter on ``base_model``, its LoRA weights trainable (for gradients), eval mode."""
    model = PeftModel.from_pretrained(base_model, str(adapter_dir), is_trainable=True)
    return model.eval()


def lora_parameter_names(model: torch.nn.Module) -> list[str]:
    """The canonical order of every flattened gradient and Adam moment in the project."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def model_content_hash(model_dir: str | Path) -> str:
    """sha256 over every file of the model directory (relative path and bytes)."""
    root = _local_dir(model_dir)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()
