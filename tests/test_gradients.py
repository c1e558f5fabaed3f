"""Batched per-example LoRA gradients equal autograd on one example at a time."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tiny_assets import save_tiny_llama
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from gradstore.features.gradients import LoraGradientComputer, reference_per_example_gradients
from gradstore.features.preconditioner import AdamPreconditioner
from gradstore.features.tokenization import TokenizedExample, collate


def lora_model(base, targets, dropout=0.0):
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=targets)
    model = get_peft_model(base, config)
    torch.manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # B starts at zero, which would zero every A gradient
            torch.nn.init.normal_(param, std=0.2)
    return model.eval()


def examples(lengths, vocab=150, seed=0):
    generator = torch.Generator().manual_seed(seed)
    out = []
    for i, length in enumerate(lengths):
        ids = torch.randint(10, vocab, (length,), generator=generator).tolist()
        labels = [-100] * (length // 2) + ids[length // 2 :]
        if i == 1:  # labels with holes, like a multi-turn conversation
            labels[length - 3] = -100
        out.append(TokenizedExample(str(i), ids, labels))
    return out


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    path = save_tiny_llama(tmp_path_factory.mktemp("llama"))
    base = AutoModelForCausalLM.from_pretrained(path)
    return lora_model(base, ["q_proj", "k_proj", "v_proj", "o_proj"])


def test_batched_equals_one_at_a_time_with_padding(llama):
    batch = examples([5, 23, 9, 31, 2])
    fast = LoraGradientComputer(llama).per_example(collate(batch, pad_token_id=0))
    slow = reference_per_example_gradients(llama, batch, pad_token_id=0)
    assert (
        fast.shape
        == slow.shape
        == (5, sum(p.numel() for p in llama.parameters() if p.requires_grad))
    )
    assert slow.abs().max() > 1e-3
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-6)


def test_rows_do_not_depend_on_batch_company_or_order(llama):
    batch = examples([7, 19, 12])
    computer = LoraGradientComputer(llama)
    together = computer.per_example(collate(batch, 0))
    alone = computer.per_example(collate(batch[1:2], 0))
    reversed_ = computer.per_example(collate(batch[::-1], 0))
    torch.testing.assert_close(alone[0], together[1], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(reversed_.flip(0), together, rtol=1e-4, atol=1e-6)


def test_dropout_is_off_while_featurising_and_the_mode_is_restored(tmp_path):
    base = AutoModelForCausalLM.from_pretrained(save_tiny_llama(tmp_path))
    model = lora_model(base, ["q_proj", "v_proj"], dropout=0.5).train()
    batch = examples([6, 11])
    fast = LoraGradientComputer(model).per_example(collate(batch, 0))
    assert model.training
    slow = reference_per_example_gradients(model, batch, 0)
    assert model.training
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(LoraGradientComputer(model).per_example(collate(batch, 0)), fast)


def test_gpt2_conv1d_layers():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=150, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    model = lora_model(GPT2LMHeadModel(config), ["c_attn", "c_proj"])
    batch = examples([6, 14, 3])
    fast = LoraGradientComputer(model).per_example(collate(batch, 0))
    slow = reference_per_example_gradients(model, batch, 0)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-6)


def test_adam_preconditioner_matches_the_formula_elementwise():
    generator = torch.Generator().manual_seed(0)
    m = torch.randn(7, generator=generator) * 1e-3
    v = torch.rand(7, generator=generator) * 1e-6
    g = torch.randn(3, 7, generator=generator) * 1e-2
    got = AdamPreconditioner(m, v)(g)
    for b in range(3):
        for i in range(7):
            gi, mi, vi = float(g[b, i]), float(m[i]), float(v[i])
            expected = (0.9 * mi + 0.1 * gi) / (0.999 * vi + 0.001 * gi * gi + 1e-8) ** 0.5
            assert abs(float(got[b, i]) - expected) <= 1e-5 * abs(expected) + 1e-7
