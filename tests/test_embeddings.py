"""RDS+ pooling and the batched encoder against one-example, loop-by-hand references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_assets import byte_tokenizer, save_tiny_llama

from gradstore.config import LoraConfig
from gradstore.examples import load_examples
from gradstore.features.embeddings import HiddenStateEncoder, position_weighted_mean
from gradstore.features.modeling import attach_new_lora, load_base_model
from gradstore.features.tokenization import ExampleEncoder


def reference_pool(hidden: np.ndarray) -> np.ndarray:
    """One unpadded (T, H) sequence: Σ_t t·h_t / Σ_t t, then L2-normalised, in float64."""
    weights = np.arange(1, len(hidden) + 1, dtype=np.float64)
    pooled = (weights[:, None] * hidden.astype(np.float64)).sum(axis=0) / weights.sum()
    return pooled / np.linalg.norm(pooled)


def test_position_weighted_mean_ignores_padding():
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((3, 5, 4)).astype(np.float32)
    lengths = [5, 2, 1]
    mask = torch.tensor([[1] * n + [0] * (5 - n) for n in lengths])
    got = position_weighted_mean(torch.from_numpy(hidden), mask).numpy()
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(got[i], reference_pool(hidden[i, :n]), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny"))


def test_batched_embeddings_equal_one_example_forward_passes(tiny):
    model = load_base_model(tiny, "cpu")
    encoder = ExampleEncoder(byte_tokenizer(), 64, "tulu")
    examples, _ = encoder.encode_all(
        load_examples(
            [
                {"prompt": "Q: 2+2", "completion": "4"},
                {"prompt": "Reverse: abcdef", "completion": "fedcba"},
                {"prompt": "x", "completion": "y"},
            ]
        )
    )
    got = HiddenStateEncoder(model, pad_token_id=0, batch_size=2).embed(examples)
    for row, example in zip(got, examples, strict=True):
        with torch.no_grad():
            out = model(input_ids=torch.tensor([example.input_ids]), output_hidden_states=True)
        final = out.hidden_states[-1][0].numpy()  # after the final norm, as RDS+ takes it
        np.testing.assert_allclose(row, reference_pool(final), rtol=1e-4, atol=1e-5)


def test_a_lora_model_with_adapters_disabled_embeds_as_its_base(tiny):
    encoder = ExampleEncoder(byte_tokenizer(), 64, "tulu")
    examples, _ = encoder.encode_all(load_examples([{"prompt": "Q: 7+1", "completion": "8"}]))
    base = HiddenStateEncoder(load_base_model(tiny, "cpu"), 0, 4).embed(examples)
    peft = attach_new_lora(load_base_model(tiny, "cpu"), LoraConfig(r=4, alpha=16), seed=0)
    for name, parameter in peft.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter)  # a trained adapter changes the states...
    changed = HiddenStateEncoder(peft, 0, 4).embed(examples)
    assert np.abs(changed - base).max() > 1e-3
    disabled = HiddenStateEncoder(peft, 0, 4, context=peft.disable_adapter).embed(examples)
    np.testing.assert_allclose(disabled, base, atol=1e-6)  # ...disabled, it is the base again
