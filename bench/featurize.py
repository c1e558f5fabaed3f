"""Build throughput: the featurizer against the reference's loop, a peer, and a real-size P.

On the toy setting (toy Llama architecture, LoRA r = 8 on q/k/v/o, d = 8192, an adapter and
Adam state as after a warmup), in one run:

- gradstore's featurizer (one forward and backward per padded batch; each LoRA map's
  per-example gradient preconditioned and projected inside the backward) against the
  reference's loop (one example at a time: whole gradient, Adam, one projection); both give
  the same features, which are compared;
- the projection's share of featurize time (preconditioning + projection + normalising);
- with ``--bergson-python``, EleutherAI's bergson (``bench/peer_bergson.py``, run in its own
  virtual environment) on the same model, adapter and tokens, interleaved with gradstore
  round by round so both see the same machine load;
- the JL quality of each projection kind: Spearman between LESS scores with and without
  projection, on the toy gradients and on synthetic gradients of realistic size
  (``bench/projection_fidelity.py`` measures fidelity over seeds, on SmolLM2 too);
- at a synthetic realistic parameter count (P = 17M: a 0.5B model at r = 128), the cost of
  the sparse projection (``--projection``, ``--nonzeros``) per example against what that
  model's forward + backward would cost here, estimated as 4 · 0.5e9 · 512 FLOPs at the
  fp32 matrix-product rate measured in this run.

    OMP_NUM_THREADS=1 python bench/featurize.py --quick --json

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from gradstore.config import LoraConfig
from gradstore.features.featurizer import CheckpointFeaturizer
from gradstore.features.gradients import reference_per_example_gradients
from gradstore.features.modeling import attach_new_lora, load_base_model, load_tokenizer
from gradstore.features.preconditioner import AdamPreconditioner
from gradstore.features.projection import PROJECTION_KINDS, make_projector
from gradstore.features.tokenization import ExampleEncoder, pad_token_id
from gradstore.toy.corpus import generate_corpus
from gradstore.toy.model import train_toy_model

SYNTHETIC_PARAMS = 17_000_000
SYNTHETIC_MODULES = 96  # 24 blocks × q/k/v/o, as in a 0.5B model
MODEL_FLOPS_PER_EXAMPLE = 4 * 0.5e9 * 512


def setup(args, workdir: Path):
    """The toy model's architecture with a non-trivial LoRA adapter and Adam state."""
    examples = generate_corpus(seed=0, per_family=max(8, args.examples // 8 + 1))
    model_dir = workdir / "model"
    train_toy_model(examples, model_dir, size=args.size, steps=1, progress=False)
    tokenizer = load_tokenizer(model_dir)
    encoded, _ = ExampleEncoder(tokenizer, 128, "tulu").encode_all(examples)
    encoded = encoded[: args.examples]
    model = attach_new_lora(
        load_base_model(model_dir, "cpu"), LoraConfig(r=args.lora_r, alpha=4 * args.lora_r), 0
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # as after a warmup: B ≠ 0, so A has gradients too
                param.copy_(torch.randn(param.shape, generator=generator) * 0.01)
    model.eval()
    model.save_pretrained(workdir / "adapter")
    tokens = [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded]
    (workdir / "tokens.json").write_text(json.dumps(tokens))
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    adam = AdamPreconditioner(
        torch.randn(n, generator=generator) * 1e-4, torch.rand(n, generator=generator) * 1e-8
    )
    return model, encoded, adam, pad_token_id(tokenizer), n


def time_featurize(featurizer, examples, kinds) -> tuple[float, dict[str, float]]:
    featurizer.timings.update(gradient_s=0.0, projection_s=0.0)
    started = time.perf_counter()
    featurizer.featurize(examples, kinds=kinds)
    return time.perf_counter() - started, dict(featurizer.timings)


def run_bergson(python: str, workdir: Path, args) -> float:
    """One timed pass of bergson (its own process and venv); examples/s."""
    command = [
        python,
        str(Path(__file__).with_name("peer_bergson.py")),
        "--model", str(workdir / "model"),
        "--adapter", str(workdir / "adapter"),
        "--examples", str(workdir / "tokens.json"),
        "--dim", str(args.dim),
        "--batch-size", str(args.batch_size),
        "--threads", str(torch.get_num_threads()),
        "--repeats", "1",
        "--json",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(json.loads(done.stdout.strip().splitlines()[-1])["examples_per_s"][0])


def toy_spearman(model, examples, adam, pad, n, dim) -> dict[str, float]:
    """LESS scores (pool · mean target) with and without each projection, toy gradients."""
    pool, targets = examples[8:], examples[:8]
    pool_raw = torch.nn.functional.normalize(
        adam(reference_per_example_gradients(model, pool, pad))
    )
    target_raw = torch.nn.functional.normalize(reference_per_example_gradients(model, targets, pad))
    exact = (pool_raw @ target_raw.T).mean(dim=1).numpy()
    out = {}
    for kind in PROJECTION_KINDS:
        featurizer = CheckpointFeaturizer(model, make_projector(kind, n, dim, 0), adam, pad, 32)
        pool_f = featurizer.featurize(pool, kinds=("adam",))["adam"]
        target_f = featurizer.featurize(targets, kinds=("sgd",))["sgd"]
        out[kind] = round(float(spearmanr(exact, (pool_f @ target_f.T).mean(axis=1)).statistic), 4)
    return out


def synthetic_gradient(generator: torch.Generator, shared: list[torch.Tensor]) -> torch.Tensor:
    """A heavy-tailed gradient-like vector: a mix of shared directions plus per-coordinate
    noise whose scale is log-normal (a few coordinates dominate, as in real gradients)."""
    weights = torch.randn(len(shared), generator=generator)
    x = sum(w * s for w, s in zip(weights, shared, strict=True))
    noise = torch.randn(SYNTHETIC_PARAMS, generator=generator)
    return x + noise.mul_(shared[0].abs().sqrt_())


def synthetic_spearman(pool_size: int, dim: int, kind: str, nonzeros: int | None) -> float:
    """Spearman between exact and projected cosines to a target at P = 17M."""
    generator = torch.Generator().manual_seed(0)
    scale = torch.exp(torch.randn(SYNTHETIC_PARAMS, generator=generator))
    shared = [scale * torch.randn(SYNTHETIC_PARAMS, generator=generator) for _ in range(4)]
    projector = make_projector(kind, SYNTHETIC_PARAMS, dim, 0, nonzeros=nonzeros)
    target = synthetic_gradient(generator, shared)
    target_p = projector.project(target[None])[0]
    exact, projected = [], []
    for _ in range(pool_size):
        x = synthetic_gradient(generator, shared)
        exact.append(float(torch.nn.functional.cosine_similarity(x, target, dim=0)))
        p = projector.project(x[None])[0]
        projected.append(float(torch.nn.functional.cosine_similarity(p, target_p, dim=0)))
    return round(float(spearmanr(exact, projected).statistic), 4)


def synthetic_projection_ms(
    dim: int, kind: str, nonzeros: int | None, rows: int = 4, repeats: int = 3
) -> float:
    """Sparse projection of (rows, 17M) gradients module slice by module slice, per example."""
    generator = torch.Generator().manual_seed(1)
    grads = torch.randn(rows, SYNTHETIC_PARAMS, generator=generator)
    projector = make_projector(kind, SYNTHETIC_PARAMS, dim, 0, nonzeros=nonzeros)
    bounds = np.linspace(0, SYNTHETIC_PARAMS, SYNTHETIC_MODULES + 1).astype(int)
    out = torch.zeros(rows, dim)
    for start, end in itertools.pairwise(bounds):  # warm the entry cache
        projector.accumulate(out, grads[:, start:end], int(start))
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for start, end in itertools.pairwise(bounds):
            projector.accumulate(out, grads[:, start:end], int(start))
        best = min(best, time.perf_counter() - started)
    return 1000 * best / rows


def matmul_flops_per_s(size: int = 1024, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Small run (about 1 min).")
    parser.add_argument("--json", action="store_true", help="Print one JSON line.")
    parser.add_argument("--examples", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None, help="Interleaved timing rounds.")
    parser.add_argument("--dim", type=int, default=8192)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", default="small", choices=["tiny", "small"])
    parser.add_argument("--projection", default="sparse", choices=PROJECTION_KINDS)
    parser.add_argument("--nonzeros", type=int, default=None, help="s of 'sparse' (default 4).")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all).")
    parser.add_argument(
        "--bergson-python", default=None, help="Python of a venv with bergson 2.5.1 installed."
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.examples = args.examples or (128 if args.quick else 256)
    rounds = args.rounds or 3

    workdir = Path(tempfile.mkdtemp(prefix="gradstore-bench-"))
    model, examples, adam, pad, n_lora = setup(args, workdir)
    projector = make_projector(args.projection, n_lora, args.dim, 0, nonzeros=args.nonzeros)
    featurizer = CheckpointFeaturizer(model, projector, adam, pad, args.batch_size)
    featurizer.featurize(examples[:2])  # warm: the projector's caches, allocator

    n = len(examples)
    rates: dict[str, list[float]] = {"adam": [], "sgd": [], "bergson": []}
    shares = []
    for _ in range(rounds):
        for kind in ("adam", "sgd"):
            seconds, split = time_featurize(featurizer, examples, (kind,))
            rates[kind].append(n / seconds)
            if kind == "adam":
                shares.append(split["projection_s"] / seconds)
        if args.bergson_python:
            rates["bergson"].append(run_bergson(args.bergson_python, workdir, args))
    batched = featurizer.featurize(examples, kinds=("adam",))["adam"]
    started = time.perf_counter()
    single = featurizer.featurize_one_at_a_time(examples, kinds=("adam",))["adam"]
    single_s = time.perf_counter() - started

    flops = matmul_flops_per_s()
    model_ms = 1000 * MODEL_FLOPS_PER_EXAMPLE / flops
    sparse = args.projection if args.projection != "rademacher" else "sjlt"
    projection_ms = synthetic_projection_ms(args.dim, sparse, args.nonzeros)
    adam_rate = statistics.median(rates["adam"])
    result = {
        "benchmark": "featurize",
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads",
        "examples": n,
        "mean_tokens": round(float(np.mean([len(e.input_ids) for e in examples])), 1),
        "model_parameters": sum(p.numel() for p in model.parameters()),
        "lora_parameters": n_lora,
        "dim": args.dim,
        "projection": args.projection,
        "nonzeros": getattr(projector, "nonzeros", None),
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "rounds": rounds,
        "examples_per_s": round(adam_rate, 1),
        "examples_per_s_rounds": [round(r, 1) for r in rates["adam"]],
        "sgd_examples_per_s": round(statistics.median(rates["sgd"]), 1),
        "one_at_a_time_examples_per_s": round(n / single_s, 2),
        "speedup_vs_one_at_a_time": round(adam_rate * single_s / n, 2),
        "max_abs_diff_vs_one_at_a_time": float(np.abs(batched - single).max()),
        "projection_share": round(statistics.median(shares), 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "spearman_toy": toy_spearman(model, examples, adam, pad, n_lora, args.dim),
        "synthetic_params": SYNTHETIC_PARAMS,
        "synthetic_projection": sparse,
        "synthetic_spearman": synthetic_spearman(
            24 if args.quick else 64, args.dim, sparse, args.nonzeros
        ),
        "synthetic_projection_ms_per_example": round(projection_ms, 2),
        "matmul_gflops": round(flops / 1e9, 1),
        "synthetic_model_ms_per_example": round(model_ms, 1),
        "synthetic_projection_share_of_model": round(projection_ms / model_ms, 5),
    }
    if args.bergson_python:
        bergson_rate = statistics.median(rates["bergson"])
        result |= {
            "bergson_examples_per_s": round(bergson_rate, 1),
            "bergson_examples_per_s_rounds": [round(r, 1) for r in rates["bergson"]],
            "speed_vs_bergson_sgd": round(statistics.median(rates["sgd"]) / bergson_rate, 2),
            "speed_vs_bergson_adam": round(adam_rate / bergson_rate, 2),
        }
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:>38}  {value}")


if __name__ == "__main__":
    main()
