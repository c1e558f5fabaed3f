"""Build throughput: the batched featurizer against the reference's one-example loop.

Same model, same LoRA adapter and Adam state, same examples, same projector; both paths
produce Adam-preconditioned, projected, normalised features, which are compared. The
one-at-a-time loop is what the LESS reference does (one forward + backward + projection
per example); the batched path does one forward and one backward per padded batch and one
projection per batch (or per buffer of batches when Π is streamed, ``--no-cache``). The
time of each path is split into gradients and preconditioning + projection.

    python bench/featurize.py --quick --json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gradstore.config import LoraConfig
from gradstore.featurizer import CheckpointFeaturizer
from gradstore.modeling import attach_new_lora, load_base_model, load_tokenizer
from gradstore.preconditioner import AdamPreconditioner
from gradstore.projection import RademacherProjector
from gradstore.tokenization import ExampleEncoder, pad_token_id
from gradstore.toy.corpus import generate_corpus
from gradstore.toy.model import train_toy_model


def setup(args):
    """The toy model's architecture with a non-trivial LoRA adapter and Adam state."""
    examples = generate_corpus(seed=0, per_family=max(8, args.examples // 8 + 1))
    model_dir = Path(tempfile.mkdtemp(prefix="gradstore-bench-")) / "model"
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
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    moments = AdamPreconditioner(
        torch.randn(n, generator=generator) * 1e-4, torch.rand(n, generator=generator) * 1e-8
    )
    projector = RademacherProjector(n, args.dim, 0, cache_bytes=0 if args.no_cache else 1 << 30)
    featurizer = CheckpointFeaturizer(
        model, projector, moments, pad_token_id(tokenizer), args.batch_size
    )
    return model, encoded, featurizer, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="Small run (< 2 min on 2 cores).")
    parser.add_argument("--json", action="store_true", help="Print one JSON line.")
    parser.add_argument("--examples", type=int, default=None)
    parser.add_argument("--dim", type=int, default=8192)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", default="small", choices=["tiny", "small"])
    parser.add_argument(
        "--no-cache", action="store_true", help="Stream Π by blocks instead of caching it."
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all).")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.examples = args.examples or (64 if args.quick else 256)

    model, examples, featurizer, n_lora = setup(args)
    featurizer.featurize(examples[:2])  # warm: the projector's sign cache, allocator
    featurizer.timings.update(gradient_s=0.0, projection_s=0.0)
    started = time.perf_counter()
    batched = featurizer.featurize(examples, kinds=("adam",))["adam"]
    batched_s = time.perf_counter() - started
    batched_split = dict(featurizer.timings)
    featurizer.timings.update(gradient_s=0.0, projection_s=0.0)
    started = time.perf_counter()
    single = featurizer.featurize_one_at_a_time(examples, kinds=("adam",))["adam"]
    single_s = time.perf_counter() - started
    single_split = dict(featurizer.timings)

    n = len(examples)
    result = {
        "benchmark": "featurize",
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads",
        "examples": n,
        "mean_tokens": round(float(np.mean([len(e.input_ids) for e in examples])), 1),
        "model_parameters": sum(p.numel() for p in model.parameters()),
        "lora_parameters": n_lora,
        "dim": args.dim,
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "projection_cached": featurizer.projector.cached,
        "examples_per_s": round(n / batched_s, 2),
        "one_at_a_time_examples_per_s": round(n / single_s, 2),
        "speedup_vs_one_at_a_time": round(single_s / batched_s, 2),
        "max_abs_diff": float(np.abs(batched - single).max()),
        "batched_gradient_s": round(batched_split["gradient_s"], 3),
        "batched_projection_s": round(batched_split["projection_s"], 3),
        "one_at_a_time_gradient_s": round(single_split["gradient_s"], 3),
        "one_at_a_time_projection_s": round(single_split["projection_s"], 3),
    }
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:>32}  {value}")


if __name__ == "__main__":
    main()
