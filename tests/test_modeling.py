"""Model loading, LoRA target choice and attachment, adapters, canonical names, model hash."""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from gradstore.config import LoraConfig
from gradstore.errors import InvalidInputError
from gradstore.features.modeling import (
    attach_new_lora,
    default_target_modules,
    load_base_model,
    load_lora_adapter,
    load_tokenizer,
    lora_parameter_names,
    model_content_hash,
    resolve_device,
)

LORA = LoraConfig(r=4, alpha=16, dropout=0.0)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device().type == expected
    if not torch.cuda.is_available():
        with pytest.raises(InvalidInputError, match="CUDA is not available"):
            resolve_device("cuda")


def test_loading_needs_a_local_model_directory(tmp_path):
    with pytest.raises(InvalidInputError, match="not a local directory"):
        load_tokenizer(tmp_path / "meta-llama/Llama-2-7b-hf")
    with pytest.raises(InvalidInputError, match=r"no config.json"):
        load_base_model(tmp_path, "cpu")


def test_base_model_is_frozen_fp32_eval_on_cpu(tiny_model_dir):
    model = load_base_model(tiny_model_dir, "cpu")
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert load_tokenizer(tiny_model_dir).eos_token == "</s>"


def tiny_gpt2() -> GPT2LMHeadModel:
    return GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=50))


def test_default_target_modules(tiny_model_dir):
    llama = load_base_model(tiny_model_dir, "cpu")
    assert default_target_modules(llama) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    llama.config.model_type = "unheard_of"  # falls back to the module names
    assert default_target_modules(llama) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    gpt2 = tiny_gpt2()
    assert default_target_modules(gpt2) == ["attn.c_attn", "attn.c_proj"]
    gpt2.config.model_type = "unheard_of"  # Conv1D layers are found by name too
    assert default_target_modules(gpt2) == ["attn.c_attn", "attn.c_proj"]

    class Mystery(nn.Module):
        def __init__(self):
            super().__init__()
            self.mixer = nn.Linear(4, 4)

    with pytest.raises(InvalidInputError, match=r"give lora.target_modules"):
        default_target_modules(Mystery())


def test_gpt2_lora_adapts_attention_only():
    model = attach_new_lora(tiny_gpt2(), LORA, seed=0)
    adapted = {n.split(".lora_")[0] for n in lora_parameter_names(model)}
    assert adapted == {
        f"base_model.model.transformer.h.{i}.attn.{m}"
        for i in range(2)
        for m in ("c_attn", "c_proj")
    }


def test_attach_new_lora_is_seeded_and_trains_only_lora(tiny_model_dir):
    def init(seed):
        model = attach_new_lora(load_base_model(tiny_model_dir, "cpu"), LORA, seed)
        return model, {
            n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad
        }

    torch.manual_seed(123)
    before = torch.rand(3)
    model, first = init(0)
    _, again = init(0)
    _, other = init(1)
    names = lora_parameter_names(model)
    assert names == list(first) and len(names) == 2 * 4 * 2  # A, B × q,k,v,o × 2 layers
    assert all(".lora_A.default." in n or ".lora_B.default." in n for n in names)
    assert all(torch.equal(first[n], again[n]) for n in names)
    assert any(not torch.equal(first[n], other[n]) for n in names if "lora_A" in n)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), before)  # attaching left the global RNG alone
    config = model.peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 16, 0.0)


def saved_adapter(model_dir, out, seed):
    """An adapter with non-zero B (a trained-looking one), saved with save_pretrained."""
    model = attach_new_lora(load_base_model(model_dir, "cpu"), LORA, seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in lora_parameter_names(model):
            param = dict(model.named_parameters())[name]
            param.copy_(torch.randn(param.shape, generator=generator))
    model.save_pretrained(out)
    return load_file(str(out / "adapter_model.safetensors"))


def test_load_lora_adapter_round_trip_and_no_leak(tiny_model_dir, tmp_path):
    saved = {s: saved_adapter(tiny_model_dir, tmp_path / f"a{s}", s) for s in (1, 2)}
    for seed in (1, 2, 1):  # a fresh base for each: nothing of one adapter reaches the next
        model = load_lora_adapter(load_base_model(tiny_model_dir, "cpu"), tmp_path / f"a{seed}")
        assert not model.training
        params = dict(model.named_parameters())
        names = lora_parameter_names(model)
        assert len(names) == len(saved[seed])
        for name in names:
            assert params[name].requires_grad
            key = name.replace(".default", "")
            assert torch.equal(params[name].detach(), saved[seed][key])

    frozen = load_lora_adapter(load_base_model(tiny_model_dir, "cpu"), tmp_path / "a1", False)
    assert lora_parameter_names(frozen) == []


def test_load_lora_adapter_refuses_a_used_base(tiny_model_dir, tmp_path):
    saved_adapter(tiny_model_dir, tmp_path / "a", 1)
    base = load_base_model(tiny_model_dir, "cpu")
    peft_model = load_lora_adapter(base, tmp_path / "a")
    with pytest.raises(InvalidInputError, match="already carries LoRA layers"):
        load_lora_adapter(base, tmp_path / "a")
    with pytest.raises(InvalidInputError, match="already carries LoRA layers"):
        load_lora_adapter(peft_model, tmp_path / "a")
    with pytest.raises(InvalidInputError, match="not a PEFT adapter"):
        load_lora_adapter(load_base_model(tiny_model_dir, "cpu"), tmp_path)


def test_model_content_hash(tmp_path):
    root = tmp_path / "model"
    (root / "sub").mkdir(parents=True)
    files = {"config.json": b"{}", "weights.bin": bytes(range(256)) * 50, "sub/tok.json": b"x"}
    for name, data in files.items():
        (root / name).write_bytes(data)
    # the obvious reference: everything in memory at once
    reference = hashlib.sha256()
    for name in sorted(files):
        reference.update(len(name).to_bytes(8, "little") + name.encode())
        reference.update(len(files[name]).to_bytes(8, "little") + files[name])
    digest = model_content_hash(root)
    assert digest == reference.hexdigest() == model_content_hash(root)
    (root / "weights.bin").write_bytes(files["weights.bin"][:-1] + b"\x01")
    assert model_content_hash(root) != digest
    (root / "weights.bin").write_bytes(files["weights.bin"])
    (root / "weights.bin").rename(root / "weights2.bin")
    assert model_content_hash(root) != digest
