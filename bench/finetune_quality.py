"""Does the selection teach the target? Fine-tune on each method's 5% and measure target loss.

For every toy family: select 5% of the pool with each method from 8 target examples, train
a fresh LoRA adapter on the base toy model with the selected examples only, and report the
mean completion loss on 48 other held-out examples of that family (lower is better).

    python bench/finetune_quality.py --json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
from pathlib import Path

import torch

from gradstore.demo.toy import run_demo
from gradstore.examples import load_examples, read_jsonl
from gradstore.features.modeling import load_tokenizer
from gradstore.features.tokenization import ExampleEncoder, pad_token_id
from gradstore.query import QueryEngine
from gradstore.selection import run_selection
from gradstore.store.datastore import Datastore
from gradstore.toy.finetune import fine_tune_and_evaluate

METHODS = ("less", "bm25", "random")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work-dir", type=Path, default=Path(".gradstore/demo"))
    parser.add_argument("--fraction", type=float, default=0.05)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from gradstore.toy.corpus import FAMILIES, generate_targets

    report = run_demo(args.work_dir, progress=not args.json)
    engine = QueryEngine(Datastore.open(report["store"]))
    model_dir = engine.manifest.model.path
    tokenizer = load_tokenizer(model_dir)
    pad = pad_token_id(tokenizer)
    encoder = ExampleEncoder(tokenizer, 128, "tulu")
    pool = {e.id: e for e in read_jsonl(Path(report["store"]) / "examples.jsonl")}
    queries = load_examples(report["targets"])  # the demo's targets, held out of the pool
    held_out = generate_targets(seed=2, per_family=48, exclude=[*pool.values(), *queries])
    losses: dict[str, dict[str, float]] = {}
    for family in FAMILIES:
        targets = [t for t in queries if t.subtask == family]
        evaluation, _ = encoder.encode_all([t for t in held_out if t.subtask == family])
        losses[family] = {}
        for method in METHODS:
            result = run_selection(engine, targets, method=method, fraction=args.fraction)
            train, _ = encoder.encode_all([pool[s.id] for s in result.selected])
            losses[family][method] = round(
                fine_tune_and_evaluate(model_dir, train, evaluation, pad, args.epochs), 4
            )
        base = fine_tune_and_evaluate(model_dir, [], evaluation, pad, 0)
        losses[family]["no fine-tuning"] = round(base, 4)
    labels = [*METHODS, "no fine-tuning"]
    mean = {m: round(sum(row[m] for row in losses.values()) / len(losses), 4) for m in labels}
    wins = sum(row["less"] < row["random"] for row in losses.values())
    out = {
        "benchmark": "finetune_quality",
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads",
        "fraction": args.fraction,
        "epochs": args.epochs,
        "target_loss": losses,
        "mean_target_loss": mean,
        "less_beats_random_families": f"{wins}/{len(FAMILIES)}",
    }
    if args.json:
        print(json.dumps(out))
        return
    print("family".ljust(12) + "".join(m.rjust(16) for m in labels))
    for family, row in losses.items():
        print(family.ljust(12) + "".join(f"{row[m]:16.4f}" for m in labels))
    print("mean".ljust(12) + "".join(f"{mean[m]:16.4f}" for m in labels))
    print(f"LESS below random in {out['less_beats_random_families']} families")
    assert math.isfinite(mean["less"])


if __name__ == "__main__":
    main()
