"""Features: batched equals the reference loop; projection keeps the LESS ranking."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from test_gradients import examples, lora_model
from tiny_assets import save_tiny_llama
from transformers import AutoModelForCausalLM

from gradstore.features.featurizer import CheckpointFeaturizer
from gradstore.features.gradients import reference_per_example_gradients
from gradstore.features.preconditioner import AdamPreconditioner, AdamUpdateDirection
from gradstore.features.projection import (
    PROJECTION_KINDS,
    DenseReferenceProjector,
    RademacherProjector,
    SparseJLProjector,
    make_projector,
)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = save_tiny_llama(tmp_path_factory.mktemp("llama"), hidden=32, layers=2)
    return lora_model(AutoModelForCausalLM.from_pretrained(path), ["q_proj", "v_proj"])


def moments(n: int):
    generator = torch.Generator().manual_seed(3)
    return torch.randn(n, generator=generator) * 1e-3, torch.rand(n, generator=generator) * 1e-5


def test_batched_features_equal_the_one_at_a_time_loop(model):
    batch = examples([4, 17, 9, 12, 30, 6, 21], seed=2)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    featurizer = CheckpointFeaturizer(
        model, RademacherProjector(n, 512, 0), AdamPreconditioner(*moments(n)), 0, batch_size=3
    )
    seen = []
    fast = featurizer.featurize(batch, kinds=("adam", "sgd"), on_batch=seen.append)
    slow = featurizer.featurize_one_at_a_time(batch, kinds=("adam", "sgd"))
    assert seen == [3, 3, 1]
    for kind in ("adam", "sgd"):
        np.testing.assert_allclose(fast[kind], slow[kind], atol=1e-4)
        np.testing.assert_allclose(np.linalg.norm(fast[kind], axis=1), 1, rtol=1e-5)
    assert not np.allclose(fast["adam"], fast["sgd"], atol=1e-2)


@pytest.mark.parametrize(
    "make",
    [
        lambda n: SparseJLProjector(n, 256, 1),
        lambda n: SparseJLProjector(n, 256, 1, cache_bytes=0),
        lambda n: RademacherProjector(n, 256, 1, block_rows=1000, cache_bytes=0),
    ],
    ids=["sjlt", "sjlt-uncached", "rademacher-streamed"],
)
def test_module_by_module_projection_equals_the_whole_gradient_reference(model, make):
    """Per-module Adam + projection inside backward = whole gradient, Adam, dense matrix;
    any set of heads (g, Γ, a ⊙ g) from one backward."""
    batch = examples([5, 13, 8, 22, 3, 16, 10, 7, 19], seed=4)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    projector = make(n)
    adam = AdamPreconditioner(*moments(n))
    update = AdamUpdateDirection(moments(n)[1], step=7)
    grads = reference_per_example_gradients(model, batch, 0)
    dense = DenseReferenceProjector(n, 256, 1) if projector.kind == "rademacher" else None
    matrix = dense.matrix if dense is not None else projector.matrix().double()
    heads = (("sgd", "adam"), ("adam",), ("sgd",), ("update",), ("adam", "update", "sgd"))
    for kinds in heads:
        featurizer = CheckpointFeaturizer(
            model, projector, adam, 0, batch_size=2, update_direction=update
        )
        got = featurizer.featurize(batch, kinds=kinds)
        assert list(got) == list(kinds)
        for kind in kinds:
            rows = {"adam": adam(grads), "update": update(grads), "sgd": grads}[kind]
            expected = torch.nn.functional.normalize((rows.double() @ matrix).float()).numpy()
            np.testing.assert_allclose(got[kind], expected, atol=1e-4)
        assert featurizer.timings["gradient_s"] > 0 and featurizer.timings["projection_s"] > 0


def test_kinds_are_checked(model):
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    featurizer = CheckpointFeaturizer(model, RademacherProjector(n, 64, 0), None, 0, 4)
    batch = examples([5, 9])
    with pytest.raises(ValueError, match="Adam moments"):
        featurizer.featurize(batch)
    with pytest.raises(ValueError, match="unknown feature kinds"):
        featurizer.featurize(batch, kinds=("sgd", "newton"))
    assert featurizer.featurize(batch, kinds=("sgd",))["sgd"].shape == (2, 64)


@pytest.mark.parametrize("kind", PROJECTION_KINDS)
def test_projected_less_ranking_keeps_the_unprojected_one(model, kind):
    """Spearman ≥ 0.9 between LESS scores with and without projection at d = 8192."""
    pool = examples([int(x) for x in np.random.default_rng(0).integers(4, 30, size=60)], seed=5)
    targets = examples([8, 15, 11], seed=9)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    adam = AdamPreconditioner(*moments(n))
    projector = make_projector(kind, n, 8192, 0)
    pool_raw = torch.nn.functional.normalize(adam(reference_per_example_gradients(model, pool, 0)))
    target_raw = torch.nn.functional.normalize(reference_per_example_gradients(model, targets, 0))
    exact = (pool_raw @ target_raw.T).mean(dim=1).numpy()
    featurizer = CheckpointFeaturizer(model, projector, adam, 0, batch_size=16)
    pool_f = featurizer.featurize(pool, kinds=("adam",))["adam"]
    target_f = featurizer.featurize(targets, kinds=("sgd",))["sgd"]
    projected = (pool_f @ target_f.T).mean(axis=1)
    rho = spearmanr(exact, projected).statistic
    assert rho >= 0.9, rho
