"""Every selection method side by side on two toy corpora: precision, latency, fine-tuned loss.

For each corpus — today's toy corpus and its hard variant (targets in their skill's wording,
much of the pool in the targets' wording but teaching other skills) — build (or reuse) a
toy datastore that serves every registered method, then for every method (and LESS over the
plain-gradient pool features):
- precision at 5% per skill family (the share of the selection from the target's family);
- selection latency: cold (a fresh engine's first query, loading only what the method
  needs) and warm (the median of its next queries);
- target loss after fine-tuning a fresh LoRA on the selected 5%, beside the ``random``
  method's 5%, the full pool and no fine-tuning (lower is better).

    python bench/quality.py --quick --json   # minutes on 2 cores
    python bench/quality.py --json           # the figures of docs/benchmarks.md
    python bench/quality.py --json --only in2core,influence_distillation
        # some methods beside random (no full-pool / no-fine-tuning baselines): new rows

The JSON report is the last line of the output.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from gradstore.config import BuildConfig, ProjectionConfig, WarmupConfig
from gradstore.demo.toy import (
    DEMO_CONFIG,
    METHODS,
    TARGETS_PER_FAMILY,
    precision_by_family,
    toy_store,
)
from gradstore.examples import Example, read_jsonl
from gradstore.features.tokenization import ExampleEncoder, pad_token_id
from gradstore.query import QueryEngine
from gradstore.store.datastore import Datastore
from gradstore.threads import threads_per_process, use_threads
from gradstore.toy.corpus import FAMILIES, VARIANTS, family_of, generate_targets
from gradstore.toy.finetune import fine_tune, target_loss

FULL_POOL, NO_FINE_TUNING = "full pool", "no fine-tuning"


@dataclass(frozen=True)
class Scale:
    per_family: int
    pretraining_steps: int | None  # None: the toy model's default (800)
    config: BuildConfig
    eval_per_family: int
    epochs: int


FULL = Scale(150, None, DEMO_CONFIG, 48, 4)
QUICK = Scale(
    50,
    250,
    DEMO_CONFIG.model_copy(
        update={
            "warmup": WarmupConfig(
                fraction=0.1, epochs=2, learning_rate=1e-3, batch_size=8, gradient_accumulation=1
            ),
            "projection": ProjectionConfig(dim=2048, seed=0),
        }
    ),
    16,
    3,
)


def measure_selection(store: Path, targets, pool_family, fraction, methods=METHODS) -> dict:
    """Precision per family and latency per method; a fresh engine per method (cold start)."""
    out = {}
    for label, method, options in methods:
        started = time.perf_counter()
        engine = QueryEngine(Datastore.open(store))
        opened_ms = (time.perf_counter() - started) * 1000
        precision, latency, selected = precision_by_family(
            engine, targets, pool_family, method, options, fraction
        )
        out[label] = {
            "precision": precision,
            "mean_precision": statistics.fmean(precision.values()),
            "cold_ms": round(opened_ms + latency[0], 1),
            "warm_ms": round(statistics.median(latency[1:]), 1),
            "selected": selected,
        }
    return out


def measure_fine_tuning(
    model_dir: Path,
    encoder: ExampleEncoder,
    pool: list[Example],
    evaluation: dict[str, list[Example]],
    selections: dict[str, dict[str, list[str]]],
    epochs: int,
    baselines: bool = True,
) -> dict[str, dict[str, float]]:
    """{family: {label: target loss}}: each method's 5%, the full pool, no fine-tuning."""
    pad = pad_token_id(encoder.tokenizer)
    by_id = {e.id: e for e in pool}
    encoded_eval = {f: encoder.encode_all(evaluation[f], eos=False)[0] for f in FAMILIES}
    losses: dict[str, dict[str, float]] = {f: {} for f in FAMILIES}
    for label, chosen in selections.items():
        for family in FAMILIES:
            train, _ = encoder.encode_all([by_id[i] for i in chosen[family]])
            model = fine_tune(model_dir, train, pad, epochs)
            losses[family][label] = round(target_loss(model, encoded_eval[family], pad), 4)
    everything, _ = encoder.encode_all(pool)
    for label, train, rounds in ((FULL_POOL, everything, epochs), (NO_FINE_TUNING, [], 0)):
        if not baselines:
            break
        model = fine_tune(model_dir, train, pad, rounds)
        for family in FAMILIES:
            losses[family][label] = round(target_loss(model, encoded_eval[family], pad), 4)
    return losses


def run_corpus(
    work_dir: Path,
    scale: Scale,
    variant: str,
    fraction: float,
    progress: bool,
    methods=METHODS,
    baselines: bool = True,
    fine_tuning: bool = True,
):
    setting = toy_store(
        work_dir,
        scale.per_family,
        seed=0,
        config=scale.config,
        variant=variant,
        pretraining_steps=scale.pretraining_steps,
        progress=progress,
    )
    pool = read_jsonl(setting.corpus)
    pool_family = {e.id: family_of(e) for e in pool}
    targets = generate_targets(1, TARGETS_PER_FAMILY, exclude=pool, variant=variant)
    held_out = generate_targets(2, scale.eval_per_family, [*pool, *targets], variant)
    evaluation = {f: [t for t in held_out if t.subtask == f] for f in FAMILIES}
    selection = measure_selection(setting.store, targets, pool_family, fraction, methods)
    if not fine_tuning:
        for row in selection.values():
            row.pop("selected")
        return {"num_examples": len(pool), "methods": selection}
    engine = QueryEngine(Datastore.open(setting.store))
    started = time.perf_counter()
    losses = measure_fine_tuning(
        setting.model_dir,
        engine.encoder,
        pool,
        evaluation,
        {label: row.pop("selected") for label, row in selection.items()},
        scale.epochs,
        baselines,
    )
    labels = [*selection, *((FULL_POOL, NO_FINE_TUNING) if baselines else ())]
    return {
        "num_examples": len(pool),
        "selected_per_query": max(1, round(fraction * len(pool))),
        "chance": 1 / len(FAMILIES),
        "methods": selection,
        "target_loss": losses,
        "mean_target_loss": {
            label: round(statistics.fmean(losses[f][label] for f in FAMILIES), 4)
            for label in labels
        },
        "below_random": {
            label: sum(losses[f][label] < losses[f]["random"] for f in FAMILIES)
            for label in labels
            if label != "random"
        },
        "assets_s": round(setting.assets_s, 1),
        "build_s": round(setting.build_s, 1),
        "fine_tuning_s": round(time.perf_counter() - started, 1),
    }


def print_tables(report: dict) -> None:
    for variant, corpus in report["corpora"].items():
        labels = list(corpus["methods"])
        if "target_loss" not in corpus:
            print(variant, {k: v["mean_precision"] for k, v in corpus["methods"].items()})
            continue
        print(
            f"\n== {variant} corpus: {corpus['num_examples']} examples, "
            f"{corpus['selected_per_query']} selected per family (chance "
            f"{corpus['chance']:.3f}) =="
        )
        print("precision".ljust(12) + "".join(label.rjust(17) for label in labels))
        for family in FAMILIES:
            row = [corpus["methods"][label]["precision"][family] for label in labels]
            print(family.ljust(12) + "".join(f"{p:17.3f}" for p in row))
        means = [corpus["methods"][label]["mean_precision"] for label in labels]
        print("mean".ljust(12) + "".join(f"{p:17.3f}" for p in means))
        for key in ("cold_ms", "warm_ms"):
            row = [corpus["methods"][label][key] for label in labels]
            print(key.ljust(12) + "".join(f"{v:17.1f}" for v in row))
        losses = corpus["mean_target_loss"]
        print("loss".ljust(12) + "".join(f"{losses[label]:17.4f}" for label in labels))
        if FULL_POOL not in losses:
            continue
        print(
            f"full pool {losses[FULL_POOL]:.4f}, no fine-tuning {losses[NO_FINE_TUNING]:.4f}; "
            "families below random: "
            + ", ".join(f"{k} {v}/{len(FAMILIES)}" for k, v in corpus["below_random"].items())
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work-dir", type=Path, default=Path(".gradstore/quality"))
    parser.add_argument("--quick", action="store_true", help="Small corpora and model.")
    parser.add_argument("--fraction", type=float, default=0.05)
    parser.add_argument("--json", action="store_true", help="Print the JSON report only.")
    parser.add_argument(
        "--only", help="Comma-separated method labels (random is always kept); no baselines."
    )
    parser.add_argument("--variant", choices=VARIANTS, help="One corpus only (default both).")
    parser.add_argument("--no-fine-tuning", action="store_true", help="Precision and latency only.")
    args = parser.parse_args()
    methods = METHODS
    if args.only:
        wanted = {*args.only.split(","), "random"}
        methods = [m for m in METHODS if m[0] in wanted or m[1] in wanted]

    use_threads(threads_per_process(1))
    scale = QUICK if args.quick else FULL
    started = time.perf_counter()
    corpora = {
        variant: run_corpus(
            args.work_dir,
            scale,
            variant,
            args.fraction,
            not args.json,
            methods,
            not args.only,
            not args.no_fine_tuning,
        )
        for variant in ([args.variant] if args.variant else VARIANTS)
    }
    report = {
        "benchmark": "quality",
        "quick": args.quick,
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads",
        "fraction": args.fraction,
        "scale": asdict(scale) | {"config": scale.config.model_dump(mode="json")},
        "corpora": corpora,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if not args.json:
        print_tables(report)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
