"""Per-layer features on a block subset: the truncated backward gives the same gradients as
a full one, and DataInf on projected per-layer features ranks like the unprojected ones."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr
from test_gradients import examples, lora_model
from tiny_assets import save_tiny_llama
from transformers import AutoModelForCausalLM

from gradstore.features.gradients import reference_per_example_gradients
from gradstore.features.layer_gradients import (
    LayerFeaturizer,
    block_of,
    default_layers,
    lora_blocks,
    only_trainable,
)
from gradstore.features.modeling import lora_parameter_names
from gradstore.features.projection import make_projector
from gradstore.selection.datainf import datainf_scores, reference_scores

LAYERS = [2, 3]


@pytest.fixture(scope="module")
def deep_llama(tmp_path_factory):
    path = save_tiny_llama(tmp_path_factory.mktemp("llama4"), layers=4)
    return lora_model(AutoModelForCausalLM.from_pretrained(path), ["q_proj", "v_proj"])


def featurizer(model, dim, kind="sjlt"):
    def projector(in_dim, out_dim):
        return make_projector(kind, in_dim, out_dim, seed=0)

    return LayerFeaturizer(model, LAYERS, dim, projector, pad_token_id=0, batch_size=3)


def per_layer_reference(model, batch):
    """Full-backward gradients of every LoRA weight, cut into the chosen blocks: [(n, p_l)]."""
    full = reference_per_example_gradients(model, batch, pad_token_id=0).double().numpy()
    names = lora_parameter_names(model)
    sizes = [p.numel() for n, p in model.named_parameters() if p.requires_grad]
    offsets = np.cumsum([0, *sizes])
    return [
        np.concatenate(
            [full[:, offsets[i] : offsets[i + 1]] for i, n in enumerate(names) if block_of(n) == b],
            axis=1,
        )
        for b in LAYERS
    ]


def test_blocks_and_default_layer_set(deep_llama):
    blocks = lora_blocks(deep_llama)
    assert list(blocks) == [0, 1, 2, 3] and all(len(v) == 4 for v in blocks.values())
    assert default_layers(range(32)) == list(range(24, 32))
    assert default_layers(range(2)) == [1] and default_layers(range(5)) == [3, 4]


def test_truncated_backward_gives_the_full_backwards_gradients(deep_llama):
    batch = examples([6, 17, 11, 4, 9])
    expected = per_layer_reference(deep_llama, batch)
    dense = featurizer(deep_llama, dim=8, kind="rademacher")
    directions, norms = dense.featurize(batch)
    np.testing.assert_allclose(
        norms, np.stack([np.linalg.norm(g, axis=1) for g in expected], 1), rtol=1e-4
    )
    for layer, g in enumerate(expected):  # each block through its own slice of one Π
        start = int(dense.layer_sizes[:layer].sum())
        block = dense.projector.matrix()[start : start + g.shape[1]].double().numpy()
        projected = g @ block
        projected /= np.linalg.norm(projected, axis=1, keepdims=True)
        np.testing.assert_allclose(directions[:, layer], projected, rtol=1e-4, atol=1e-5)
    assert list(dense.layer_sizes) == [g.shape[1] for g in expected]
    # the weights outside the subset are trainable again afterwards
    assert all(p.requires_grad for n, p in deep_llama.named_parameters() if "lora_" in n)


def test_frozen_blocks_get_no_backward(deep_llama):
    names = [n for b in LAYERS for n in lora_blocks(deep_llama)[b]]
    with only_trainable(deep_llama, names):
        trainable = [n for n, p in deep_llama.named_parameters() if p.requires_grad]
    assert trainable == names


def test_projected_per_layer_features_rank_like_unprojected_gradients(deep_llama):
    pool, targets = (
        examples([9, 14, 6, 21, 12, 8, 17, 10, 5, 13] * 3, seed=4),
        examples([11, 15], seed=9),
    )
    expected = reference_scores(
        per_layer_reference(deep_llama, pool),
        per_layer_reference(deep_llama, targets),
        [g.shape[1] for g in per_layer_reference(deep_llama, targets)],
    )
    fast = featurizer(deep_llama, dim=512)
    pool_dirs, pool_norms = fast.featurize(pool)
    target_dirs, target_norms = fast.featurize(targets)

    def blocks():
        yield 0, pool_dirs.astype(np.float16), pool_norms

    got = datainf_scores(blocks, pool_norms, target_dirs, target_norms, fast.layer_sizes)
    for j in range(expected.shape[1]):
        rho = spearmanr(got[:, j], expected[:, j]).statistic
        print(f"target {j}: Spearman {rho:.3f}")
        assert rho > 0.9, rho
        assert set(np.argsort(-got[:, j])[:3]) & set(np.argsort(-expected[:, j])[:3])
