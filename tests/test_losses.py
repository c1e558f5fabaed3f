"""The chunked completion loss equals the model's own full-logit loss, values and gradients."""

from __future__ import annotations

import pytest
import torch
from test_gradients import examples, lora_model
from tiny_assets import save_tiny_llama
from transformers import AutoModelForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig

from gradstore.features.losses import completion_losses, labelled_token_losses, per_example_losses
from gradstore.features.tokenization import collate


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    path = save_tiny_llama(tmp_path_factory.mktemp("llama"))
    return lora_model(AutoModelForCausalLM.from_pretrained(path), ["q_proj", "v_proj"])


def lora_grads(model) -> torch.Tensor:
    grads = [p.grad.reshape(-1) for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    return torch.cat(grads)


@pytest.mark.parametrize("chunk_tokens", [1, 3, 512])
def test_chunked_loss_and_gradient_equal_the_full_logit_loss(llama, chunk_tokens):
    batch = collate(examples([9, 14, 5, 11]), pad_token_id=0)
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0])  # every row's loss reaches the gradient

    logits = llama(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    reference = per_example_losses(logits, batch["labels"])
    (reference * weights).sum().backward()
    reference_grads = lora_grads(llama)

    tokens, owner = labelled_token_losses(
        llama, batch["input_ids"], batch["attention_mask"], batch["labels"], chunk_tokens
    )
    counts = (batch["labels"][:, 1:] != -100).sum(dim=1)
    chunked = torch.zeros(4).index_add(0, owner, tokens) / counts
    (chunked * weights).sum().backward()
    torch.testing.assert_close(chunked, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lora_grads(llama), reference_grads, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(completion_losses(llama, batch), reference.detach())


def test_softcapped_logits_are_capped_as_the_model_caps_them():
    config = Gemma3TextConfig(
        vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        final_logit_softcapping=2.0, sliding_window=16,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config).eval()
    batch = collate(examples([7, 12], vocab=120), pad_token_id=0)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        assert logits.abs().max() <= 2.0  # the model caps them
        reference = per_example_losses(logits, batch["labels"])
        torch.testing.assert_close(completion_losses(model, batch), reference)
