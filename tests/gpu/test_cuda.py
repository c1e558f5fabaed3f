"""The CPU tests' promises on CUDA: same projection, same features, same search answers.

Marked ``gpu`` and skipped where no CUDA device is present (CI has none); run them on a
GPU host with ``pytest -m gpu``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_gradients import examples, lora_model
from tiny_assets import save_tiny_llama
from transformers import AutoModelForCausalLM

from gradstore.features.featurizer import CheckpointFeaturizer
from gradstore.features.preconditioner import AdamPreconditioner
from gradstore.features.projection import (
    PROJECTION_KINDS,
    make_projector,
    rademacher_block,
    sjlt_entries,
)

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def test_projection_entries_are_identical_on_cpu_and_cuda():
    rows = torch.arange(5_000_000, 5_100_000)
    for seed in (0, 7, 2**40 + 3):
        cpu_columns, cpu_signs = sjlt_entries(seed, rows, 8192)
        gpu_columns, gpu_signs = sjlt_entries(seed, rows.to(CUDA), 8192)
        assert torch.equal(gpu_columns.cpu(), cpu_columns)
        assert torch.equal(gpu_signs.cpu(), cpu_signs)
        assert torch.equal(
            rademacher_block(seed, 100, 300, 8192, CUDA).cpu(),
            rademacher_block(seed, 100, 300, 8192),
        )


@pytest.mark.parametrize("kind", PROJECTION_KINDS)
def test_projections_agree_on_cpu_and_cuda(kind):
    x = torch.randn(6, 50_000, generator=torch.Generator().manual_seed(0))
    cpu = make_projector(kind, 50_000, 4096, 1).project(x)
    gpu = make_projector(kind, 50_000, 4096, 1, CUDA).project(x.to(CUDA)).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("kind", PROJECTION_KINDS)
def test_features_on_cuda_equal_the_cpu_reference(tmp_path, kind):
    path = save_tiny_llama(tmp_path / "llama", hidden=32, layers=2)
    batch = examples([5, 13, 8, 22, 3, 16, 10], seed=4)
    features = {}
    for device in ("cpu", "cuda"):
        base = AutoModelForCausalLM.from_pretrained(path)
        model = lora_model(base, ["q_proj", "v_proj"]).to(device)
        n = sum(p.numel() for p in model.parameters() if p.requires_grad)
        generator = torch.Generator().manual_seed(3)
        m = torch.randn(n, generator=generator) * 1e-3
        v = torch.rand(n, generator=generator) * 1e-5
        featurizer = CheckpointFeaturizer(
            model,
            make_projector(kind, n, 512, 0, device),
            AdamPreconditioner(m.to(device), v.to(device)),
            0,
            batch_size=3,
        )
        features[device] = featurizer.featurize(batch, kinds=("adam", "sgd"))
    for kind_ in ("adam", "sgd"):
        np.testing.assert_allclose(features["cuda"][kind_], features["cpu"][kind_], atol=2e-4)


def test_scan_on_cuda_equals_the_cpu_scan(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))
    from query import write_synthetic_store

    from gradstore.store.datastore import Datastore
    from gradstore.store.search import FeatureScanner, top_k

    write_synthetic_store(tmp_path, 3000)
    store = Datastore.open(tmp_path)
    queries = np.random.default_rng(0).standard_normal((8, 4, 8192)).astype(np.float32)
    cpu = FeatureScanner(store, "cpu").scores("adam", queries)
    gpu_scanner = FeatureScanner(store, "cuda")
    for _ in range(2):  # the second pass reads the GPU-resident copy
        gpu = gpu_scanner.scores("adam", queries)
        np.testing.assert_allclose(gpu, cpu, rtol=1e-4, atol=1e-4)
    assert top_k(gpu.max(axis=1), 150).tolist() == top_k(cpu.max(axis=1), 150).tolist()


def test_faiss_gpu_answers_equal_cpu_answers():
    import faiss

    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        pytest.skip("this FAISS build has no GPU support (install the gpu extra)")
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((20_000, 256)).astype(np.float32)
    queries = rng.standard_normal((8, 256)).astype(np.float32)
    cpu = faiss.IndexFlatIP(256)
    cpu.add(vectors)
    gpu = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, cpu)
    cpu_scores, cpu_rows = cpu.search(queries, 1000)
    gpu_scores, gpu_rows = gpu.search(queries, 1000)
    np.testing.assert_allclose(gpu_scores, cpu_scores, rtol=1e-4, atol=1e-4)
    assert (gpu_rows == cpu_rows).mean() > 0.999  # only near-ties may swap
