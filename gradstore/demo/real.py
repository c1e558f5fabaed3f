"""The demo on a real model and real data: Arena-Hard + AlpacaEval pool, three target skills.

The pool is Arena-Hard's answered prompts (categories coding, math, creative_writing) plus
AlpacaEval's instructions with their reference outputs (category "general"). Targets, per
category: GSM8K's chain-of-thought exemplars (math), HumanEval problems with their canonical
solutions (coding), and Arena-Hard creative-writing prompts held out of the pool (writing).
The category of a pool example is evaluation metadata only: the share of a selection in the
target's own category measures whether a method found the skill (chance: the category's
share of the pool). ``bench/real.py`` adds fine-tuned losses, costs and speed to the same
pieces.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradstore.config import BuildConfig, LoraConfig, ProjectionConfig, WarmupConfig
from gradstore.examples import Example

CATEGORIES = ("math", "coding", "creative_writing")
GENERAL = "general"
# (label, method, options): every registered method, and LESS over plain-gradient features
METHODS: list[tuple[str, str, dict[str, Any]]] = [
    ("less", "less", {}),
    ("less (sgd pool)", "less", {"pool_features": "sgd"}),
    ("rds", "rds", {}),
    ("dsir", "dsir", {}),
    ("bm25", "bm25", {}),
    ("in2core", "in2core", {}),
    ("influence_distillation", "influence_distillation", {}),
    ("delift", "delift", {}),
    ("random", "random", {}),
]
# As the toy demo, the real one leaves DELIFT out: its pairwise kernel costs more than the
# rest of the build (bench/real.py runs it).
DEMO_SKIPS = ("delift",)
# Sized for minutes on 2 CPU cores with a 135M model: a short context, a small projection and
# one warmup checkpoint per epoch of a quarter of the pool (docs/benchmarks.md).
REAL_DEMO_CONFIG = BuildConfig(
    lora=LoraConfig(r=8, alpha=32, dropout=0.1),
    warmup=WarmupConfig(
        fraction=0.25, epochs=2, learning_rate=2e-4, batch_size=8, gradient_accumulation=1
    ),
    projection=ProjectionConfig(dim=2048, seed=0),
    max_seq_len=256,
    pool_features=["adam", "sgd"],
)


@dataclass(frozen=True)
class RealSetting:
    pool: list[Example]
    category: dict[str, str]  # pool ID → category (evaluation only)
    targets: dict[str, list[Example]]  # category → few-shot targets given to the selectors
    held_out: dict[str, list[Example]]  # category → examples no selector sees (losses)


def real_setting(per_source: int, targets_per_category: int, seed: int = 0) -> RealSetting:
    """A seeded pool of ``per_source`` examples of each Arena-Hard category and of AlpacaEval,
    and targets; the writing targets and held-out examples are not in the pool."""
    from gradstore.assets.datasets import load_dataset_examples

    rng = random.Random(seed)
    arena = _by_subtask(load_dataset_examples("arena-hard"))
    writing = list(arena["creative_writing"])
    rng.shuffle(writing)
    reserved = 5 * targets_per_category  # writing targets and held-out examples
    arena["creative_writing"] = writing[reserved:]
    pool: list[Example] = []
    category: dict[str, str] = {}
    for subtask in sorted(arena):
        for example in rng.sample(arena[subtask], min(per_source, len(arena[subtask]))):
            pool.append(example.model_copy(update={"id": f"arena-{example.id}"}))
            category[pool[-1].id] = subtask
    alpaca = load_dataset_examples("alpaca-eval")
    for example in rng.sample(alpaca, min(per_source, len(alpaca))):
        pool.append(example.model_copy(update={"id": f"alpaca-{example.id}"}))
        category[pool[-1].id] = GENERAL
    rng.shuffle(pool)
    sources = {
        "math": load_dataset_examples("gsm8k-cot"),
        "coding": load_dataset_examples("humaneval"),
        "creative_writing": writing[:reserved],
    }
    targets, held_out = {}, {}
    for name, examples in sources.items():
        examples = list(examples)
        rng.shuffle(examples)
        few = min(targets_per_category, len(examples) // 2)
        targets[name] = [e.model_copy(update={"subtask": name}) for e in examples[:few]]
        held_out[name] = examples[few : few + 4 * targets_per_category]
    return RealSetting(pool, category, targets, held_out)


def _by_subtask(examples: list[Example]) -> dict[str, list[Example]]:
    groups: dict[str, list[Example]] = {}
    for example in examples:
        groups.setdefault(example.subtask or "", []).append(example)
    return groups


def chance(setting: RealSetting) -> dict[str, float]:
    """Each category's share of the pool: a random selection's expected share."""
    values = list(setting.category.values())
    return {c: values.count(c) / len(values) for c in CATEGORIES}


def measure_methods(
    store: Path, setting: RealSetting, fraction: float, methods=METHODS
) -> dict[str, dict[str, Any]]:
    """Per method: the share of each selection in the target's category, cold and warm
    latency (a fresh engine's first query; the median of the same queries again)."""
    from gradstore.query import QueryEngine
    from gradstore.selection import run_selection
    from gradstore.store.datastore import Datastore

    out = {}
    for label, method, options in methods:
        started = time.perf_counter()
        engine = QueryEngine(Datastore.open(store))
        opened_ms = (time.perf_counter() - started) * 1000
        share, latency, selected = {}, [], {}
        for _ in range(2):
            for name in CATEGORIES:
                result = run_selection(
                    engine, setting.targets[name], method=method, fraction=fraction,
                    options=options,
                )  # fmt: skip
                latency.append(result.timings_ms["total"])
                hits = sum(setting.category[s.id] == name for s in result.selected)
                share[name] = round(hits / len(result.selected), 3)
                selected[name] = [s.id for s in result.selected]
        out[label] = {
            "share": share,
            "mean_share": round(statistics.fmean(share.values()), 3),
            "cold_ms": round(opened_ms + latency[0], 1),
            "warm_ms": round(statistics.median(latency[len(CATEGORIES) :]), 1),
            "selected": selected,
        }
    return out


def run_real_demo(
    work_dir: Path,
    model: str,
    per_source: int = 16,
    fraction: float = 0.05,
    seed: int = 0,
    config: BuildConfig = REAL_DEMO_CONFIG,
    progress: bool = True,
) -> dict[str, Any]:
    """Get the model and data (cached), build the store once, and measure every method."""
    from gradstore.assets.models import KNOWN_MODELS, get_model
    from gradstore.build import build_all
    from gradstore.examples import write_jsonl
    from gradstore.store.datastore import MANIFEST

    work_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model_dir = Path(model)
    if model in KNOWN_MODELS:
        model_dir = work_dir / "models" / model
        get_model(model, model_dir)
    setting = real_setting(per_source, targets_per_category=4, seed=seed)
    assets_s = time.perf_counter() - started
    rows = [row for row in METHODS if row[1] not in DEMO_SKIPS]
    store = work_dir / f"store-{model_dir.name}-{per_source}"
    started = time.perf_counter()
    if not (store / MANIFEST).exists():
        pool_file = work_dir / f"pool-{per_source}.jsonl"
        write_jsonl(setting.pool, pool_file)
        served = sorted({method for _, method, _ in rows})
        build_all(store, pool_file, model_dir, config, progress=progress, methods=served)
    build_s = time.perf_counter() - started
    results = measure_methods(store, setting, fraction, rows)
    return {
        "model": str(model_dir),
        "num_examples": len(setting.pool),
        "fraction": fraction,
        "chance": chance(setting),
        "share": {c: {label: r["share"][c] for label, r in results.items()} for c in CATEGORIES},
        "mean_share": {label: r["mean_share"] for label, r in results.items()},
        "query_ms": {label: r["warm_ms"] for label, r in results.items()},
        "assets_s": round(assets_s, 1),
        "build_s": round(build_s, 1),
    }


def format_real_table(report: dict[str, Any]) -> str:
    from gradstore.demo.toy import method_columns

    rows = [(c, values, ".3f") for c, values in report["share"].items()]
    rows += [("mean", report["mean_share"], ".3f"), ("warm query ms", report["query_ms"], ".0f")]
    chance_text = ", ".join(f"{c} {v:.2f}" for c, v in report["chance"].items())
    return "\n".join(
        [
            f"share of the selection in the target's category, {report['fraction']:.0%} of "
            f"{report['num_examples']} pool examples (chance: {chance_text})",
            *method_columns("category", list(report["mean_share"]), rows),
            f"model and data {report['assets_s']} s, datastore build {report['build_s']} s",
        ]
    )
