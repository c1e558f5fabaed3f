"""Peer benchmark: EleutherAI's bergson featurizing the same model, adapter and tokens.

Why it exists: to put gradstore's featurizer throughput next to a published per-example
gradient tool on identical inputs (a HF causal LM, a PEFT LoRA adapter saved with
``save_pretrained`` and a JSON list of ``{"input_ids", "labels"}`` with -100 on masked
tokens). It is not part of gradstore and is never imported by it: bergson pins its own
dependency set, so this script runs with the interpreter of a separate virtual environment
(see the docs), e.g.::

    /work/bergson-venv/bin/python bench/peer_bergson.py --model DIR --adapter DIR \\
        --examples tokens.json --dim 8192 --batch-size 32 --threads 1 --repeats 3 --json

What is timed is bergson's own in-memory collection path, ``bergson.InMemoryCollector``
driven by ``bergson.CollectorComputer`` (one forward and one backward per batch with hooks
on every LoRA ``lora_A``/``lora_B`` linear map, per-module random projection in the
hooks, rows gathered into a NumPy buffer). ``bergson.collect_gradients`` would also write
the gradients, the dataset and the processor to disk; the in-memory collector avoids that,
and the only write left in the timed path is bergson's tiny ``total_processed.pt`` in a
temporary directory. The random projection matrices are generated during the warm-up and
cached by bergson's ``GradientProcessor``, as gradstore's cached projector does.

With ``--projection per_module`` (the default) bergson projects each module's gradient
G (O×I) on both sides, L G Rᵀ with L (p×O) and R (p×I) Rademacher matrices, so every
module contributes p² dims; p is chosen as the largest integer with
``modules × p² ≤ --dim``. ``--projection global`` instead sums one-sided projections of
each flattened module gradient into a single ``--dim`` vector.

The last line printed is one JSON object (``examples_per_s`` has one rate per repeat).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="HF causal-LM directory")
    parser.add_argument("--adapter", required=True, help="PEFT adapter directory")
    parser.add_argument(
        "--examples",
        required=True,
        help='JSON list of {"input_ids": [...], "labels": [...]} (-100 = masked)',
    )
    parser.add_argument("--dim", type=int, default=8192, help="total feature dimension")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per batch")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the data")
    parser.add_argument(
        "--projection",
        choices=["per_module", "global"],
        default="per_module",
        help="bergson's projection_target",
    )
    parser.add_argument(
        "--loss-reduction",
        choices=["mean", "sum"],
        default="mean",
        help="per-example loss over supervised tokens (gradstore: mean; bergson default: sum)",
    )
    parser.add_argument(
        "--adam-normalizer",
        action="store_true",
        help="divide gradients by sqrt(v)+eps with a synthetic Adam second moment "
        "(bergson's AdamNormalizer; it has no first-moment term)",
    )
    parser.add_argument(
        "--no-unit-normalize",
        action="store_true",
        help="skip bergson's unit normalisation of the concatenated features",
    )
    parser.add_argument(
        "--bergson-batching",
        action="store_true",
        help="bergson's length-sorted bin packing (token budget batch_size × longest, at "
        "most batch_size examples) instead of consecutive chunks of batch_size",
    )
    parser.add_argument("--json", action="store_true", help="print only the JSON result line")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")  # bergson's progress bar, one per pass
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    warnings.filterwarnings("ignore")

    import torch

    torch.set_num_threads(args.threads)
    with _quiet():  # bitsandbytes and bergson log on import (bergson logs to stdout)
        import bergson
        from bergson import (
            CollectorComputer,
            GradientProcessor,
            IndexConfig,
            InMemoryCollector,
            PreprocessConfig,
        )
        from bergson.data import allocate_batches
        from bergson.gradients import AdamNormalizer
        from bergson.utils.worker_utils import extract_peft_target_modules
        from datasets import Dataset
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
    logging.disable(logging.INFO)  # "Tracking N modules", "Total processed" on every pass

    def say(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr)

    rows = json.loads(Path(args.examples).read_text())
    for row in rows:
        if len(row["input_ids"]) != len(row["labels"]):
            raise SystemExit("each example needs labels as long as its input_ids")
    data = Dataset.from_list(
        [
            {"input_ids": r["input_ids"], "labels": r["labels"], "length": len(r["input_ids"])}
            for r in rows
        ]
    )
    n = len(data)

    # As bergson's setup_model_and_peft loads a pretrained adapter, but with the base
    # model given explicitly instead of the adapter's base_model_name_or_path.
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, args.adapter, autocast_adapter_dtype=False)
    model.eval()
    model.requires_grad_(False)
    model.get_input_embeddings().requires_grad_(True)  # so the backward pass runs
    targets = extract_peft_target_modules(model)  # every lora_A / lora_B linear map

    if args.projection == "per_module":
        p = math.isqrt(args.dim // len(targets))
        if p == 0:
            raise SystemExit(f"--dim {args.dim} < one dim for each of {len(targets)} modules")
        total_dim = len(targets) * p * p
        projection = (
            f"per_module double-sided Rademacher (JL scale): {len(targets)} LoRA modules "
            f"(lora_A, lora_B separately) × {p}×{p}"
        )
    else:
        p = args.dim
        total_dim = args.dim
        projection = f"global one-sided Rademacher (JL scale), {len(targets)} modules summed"
    if total_dim != args.dim:
        say(f"note: {len(targets)} modules × {p}² = {total_dim} dims, not {args.dim}")

    normalizers = {}
    if args.adam_normalizer:
        generator = torch.Generator().manual_seed(0)
        for name in sorted(targets):
            weight = model.base_model.get_submodule(name).weight
            avg_sq = torch.rand(weight.shape, generator=generator) * 1e-8
            normalizers[name] = AdamNormalizer(avg_sq)
    processor = GradientProcessor(
        normalizers,
        projection_dim=p,
        projection_type="rademacher",
        projection_target=args.projection,
    )
    preprocess = PreprocessConfig(unit_normalize=not args.no_unit_normalize)
    workdir = tempfile.mkdtemp(prefix="peer-bergson-")
    cfg = IndexConfig(
        run_path=str(Path(workdir) / "run"),
        model=args.model,
        projection_dim=p,
        projection_type="rademacher",
        projection_target=args.projection,
        loss_reduction=args.loss_reduction,
    )
    cfg.partial_run_path.mkdir(parents=True)  # CollectorComputer saves a counter there

    def batches_for(subset) -> list[list[int]]:
        if args.bergson_batching:
            lengths = subset["length"]
            return allocate_batches(
                lengths, args.batch_size * max(lengths), max_batch_size=args.batch_size
            )
        m = len(subset)
        return [list(range(i, min(m, i + args.batch_size))) for i in range(0, m, args.batch_size)]

    def featurize(subset) -> torch.Tensor:
        collector = InMemoryCollector(
            model=model.base_model,
            cfg=cfg,
            processor=processor,
            target_modules=targets,
            data=subset,
            preprocess_cfg=preprocess,
        )
        computer = CollectorComputer(
            model=model, data=subset, collector=collector, batches=batches_for(subset), cfg=cfg
        )
        computer.run_with_collector_hooks()
        return torch.cat(list(collector.gradients.values()), dim=1)

    started = time.perf_counter()
    warm = featurize(data.select(range(min(2, n))))  # also generates the projections
    say(f"warm-up on {len(warm)} examples: {time.perf_counter() - started:.2f}s")
    rates = []
    features = warm
    for repeat in range(args.repeats):
        started = time.perf_counter()
        features = featurize(data)
        elapsed = time.perf_counter() - started
        rates.append(round(n / elapsed, 2))
        say(f"repeat {repeat + 1}: {n} examples in {elapsed:.3f}s = {rates[-1]} examples/s")
    shutil.rmtree(workdir, ignore_errors=True)
    if features.shape != (n, total_dim) or not torch.isfinite(features).all():
        raise SystemExit(f"unexpected features: {tuple(features.shape)}")
    norms = features.float().norm(dim=1)

    notes = [
        "bergson.InMemoryCollector + CollectorComputer (no index written to disk)",
        f"loss_reduction={args.loss_reduction} over labels != -100 (bergson masks by labels)",
        "lora_A and lora_B are separate modules (exact LoRA weight gradients, scaling included)",
        "Adam: " + ("AdamNormalizer, synthetic v" if args.adam_normalizer else "none"),
        "unit-normalised" if not args.no_unit_normalize else "not normalised",
        "batches: "
        + ("bergson bin packing" if args.bergson_batching else f"{args.batch_size} in order"),
        f"projection matrices cached after warm-up; {args.threads} torch thread(s)",
        f"feature norms {norms.min():.3g}..{norms.max():.3g}",
    ]
    if total_dim != args.dim:
        notes.append(f"requested dim {args.dim}, got {total_dim}")
    result = {
        "tool": "bergson",
        "version": bergson.__version__,
        "examples": n,
        "dim": total_dim,
        "examples_per_s": rates,
        "projection": projection,
        "notes": "; ".join(notes),
    }
    print(json.dumps(result))
    return 0


class _quiet:
    """Send stdout to stderr while bergson and its dependencies import."""

    def __enter__(self) -> None:
        self._stdout = sys.stdout
        sys.stdout = sys.stderr

    def __exit__(self, *exc: object) -> None:
        sys.stdout = self._stdout


if __name__ == "__main__":
    sys.exit(main())
