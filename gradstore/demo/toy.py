"""The end-to-end demo: toy assets → datastore → a selection per toy family and method.

Precision here is the share of the selected examples that come from the target's own skill
family (the family is evaluation metadata; no selector sees it). Random's expected
precision is one over the number of families. The pieces (``toy_store``,
``precision_by_family``) are shared with ``bench/quality.py``.
"""

from __future__ import annotations

import shutil
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradstore.build import build_all
from gradstore.config import BuildConfig, LoraConfig, ProjectionConfig, WarmupConfig
from gradstore.examples import Example, read_jsonl
from gradstore.query import QueryEngine
from gradstore.selection import METHODS as REGISTERED
from gradstore.selection import run_selection
from gradstore.store.datastore import MANIFEST, Datastore

# Sized for minutes on 2 CPU cores. The LESS defaults (r=128, lr 2e-5, batch 128) assume a
# multi-billion-parameter model and a large pool; at toy scale they would leave the LoRA
# adapter untouched, so the demo scales them down (recorded in docs/decisions.md).
DEMO_CONFIG = BuildConfig(
    lora=LoraConfig(r=8, alpha=32, dropout=0.1),
    warmup=WarmupConfig(
        fraction=0.05, epochs=4, learning_rate=1e-3, batch_size=8, gradient_accumulation=1
    ),
    projection=ProjectionConfig(dim=8192, seed=0),
    max_seq_len=128,
    batch_size=32,
    shard_size=512,
    pool_features=["adam", "sgd"],
)
# (label, method, options): every registered method with its defaults, and LESS over the
# plain-gradient pool features the demo store also keeps
METHODS: list[tuple[str, str, dict[str, Any]]] = [
    ("less", "less", {}),
    ("less (sgd pool)", "less", {"pool_features": "sgd"}),
    *[(name, name, {}) for name in REGISTERED if name != "less"],
    ("infdist (landmark 128)", "influence_distillation", {"mode": "landmark", "landmarks": 128}),
]
TARGETS_PER_FAMILY = 8
# The demo leaves out the methods whose artifacts cost more than the rest of the build
# (DELIFT's pairwise kernel: 1.5× it on the bench store); bench/quality.py runs every method.
DEMO_SKIPS = ("delift",)


@dataclass(frozen=True)
class ToyStore:
    corpus: Path
    model_dir: Path
    store: Path
    assets_s: float
    build_s: float


def toy_store(
    work_dir: Path,
    per_family: int = 150,
    seed: int = 0,
    config: BuildConfig = DEMO_CONFIG,
    variant: str = "standard",
    pretraining_steps: int | None = None,
    progress: bool = True,
    methods: Sequence[str] | None = None,
) -> ToyStore:
    """Toy assets and a datastore serving ``methods`` (default: every registered one),
    built once and reused."""
    from gradstore.toy.model import ensure_toy_assets

    started = time.perf_counter()
    corpus, model_dir = ensure_toy_assets(
        work_dir / "assets",
        seed=seed,
        per_family=per_family,
        variant=variant,
        steps=pretraining_steps,
        progress=progress,
    )
    assets_s = time.perf_counter() - started
    tag = "" if variant == "standard" else f"{variant}-"
    shortened = f"-{pretraining_steps}steps" if pretraining_steps else ""
    store = work_dir / f"store-{tag}{per_family}-{seed}{shortened}"
    built = time.perf_counter()
    methods = sorted(REGISTERED) if methods is None else sorted(methods)
    if not (store / MANIFEST).exists():
        shutil.rmtree(store, ignore_errors=True)
        build_all(store, corpus, model_dir, config, progress=progress, methods=methods)
    else:  # a store cached before a method registered gains its artifacts
        from gradstore.artifacts import add_artifacts
        from gradstore.selection import extra_artifacts

        add_artifacts(store, extra_artifacts(methods), progress=progress)
    return ToyStore(corpus, model_dir, store, assets_s, time.perf_counter() - built)


def precision_by_family(
    engine: QueryEngine,
    targets: list[Example],
    pool_family: dict[str, str],
    method: str,
    options: dict[str, Any],
    fraction: float,
) -> tuple[dict[str, float], list[float], dict[str, list[str]]]:
    """({family: precision}, latencies in ms in query order, {family: selected IDs})."""
    from gradstore.toy.corpus import FAMILIES

    precision, latency, selected = {}, [], {}
    for family in FAMILIES:
        family_targets = [t for t in targets if t.subtask == family]
        result = run_selection(
            engine, family_targets, method=method, fraction=fraction, options=options
        )
        hits = sum(pool_family[s.id] == family for s in result.selected)
        precision[family] = hits / len(result.selected)
        latency.append(result.timings_ms["total"])
        selected[family] = [s.id for s in result.selected]
    return precision, latency, selected


def run_demo(
    work_dir: Path,
    per_family: int = 150,
    seed: int = 0,
    fraction: float = 0.05,
    config: BuildConfig = DEMO_CONFIG,
    progress: bool = True,
) -> dict:
    """Build (or reuse) the toy datastore and measure precision per family and method."""
    from gradstore.toy.corpus import FAMILIES, family_of, generate_targets

    rows = [row for row in METHODS if row[1] not in DEMO_SKIPS]
    served = sorted({method for _, method, _ in rows})
    setting = toy_store(work_dir, per_family, seed, config, progress=progress, methods=served)
    pool = read_jsonl(setting.corpus)
    pool_family = {e.id: family_of(e) for e in pool}
    engine = QueryEngine(Datastore.open(setting.store))
    # held out word for word: a target that is also in the pool would flatter every method
    targets = generate_targets(seed=seed + 1, per_family=TARGETS_PER_FAMILY, exclude=pool)
    by_method = {
        label: precision_by_family(engine, targets, pool_family, method, options, fraction)
        for label, method, options in rows
    }
    precision = {f: {label: by_method[label][0][f] for label, _, _ in rows} for f in FAMILIES}
    mean = {
        label: sum(p[label] for p in precision.values()) / len(precision) for label, _, _ in rows
    }
    return {
        "num_examples": engine.manifest.num_examples,
        "families": list(FAMILIES),
        "fraction": fraction,
        "selected_per_query": max(1, round(fraction * engine.manifest.num_examples)),
        "precision": precision,
        "mean_precision": mean,
        "chance": 1 / len(FAMILIES),
        "query_ms_mean": {k: sum(v[1]) / len(v[1]) for k, v in by_method.items()},
        "assets_s": round(setting.assets_s, 1),
        "build_s": round(setting.build_s, 1),
        "store": str(setting.store),
        "targets": [t.to_record() for t in targets],
    }


def method_columns(
    first: str, labels: Sequence[str], rows: Sequence[tuple[str, dict, str]]
) -> list[str]:
    """A header and one line per (name, {label: value}, format spec) row, one column per
    method label, each as wide as its label (every label readable), right-aligned."""
    width = max(len(name) for name in [first, *(row[0] for row in rows)]) + 2
    column = {label: max(9, len(label) + 2) for label in labels}

    def line(name: str, values: dict, spec: str) -> str:
        return name.ljust(width) + "".join(f"{values[x]:>{column[x]}{spec}}" for x in labels)

    return [line(first, {x: x for x in labels}, ""), *(line(*row) for row in rows)]


# What the table means, printed under it: what each column is, and why the order at toy
# scale is not the order on real data (README, "Real models and real data").
LEGEND = (
    "Precision: the share of a selection drawn from the target's own toy family; query ms: "
    "the mean time of one selection. less = LESS, gradient cosine over Adam (or plain, 'sgd "
    "pool') LoRA gradients; rds = RDS+, hidden-state cosine; dsir = n-gram importance; bm25 = "
    "lexical; in2core and influence_distillation ('landmark 128': its 128-landmark "
    "approximation) = influence estimates; random = chance.",
    "The order is the toy's: the model was pre-trained on these very skills, so its hidden "
    "states (rds) already tell the families apart, while LESS ranks by how much an example "
    "would lower the target's loss, which a family label measures only roughly; on real data "
    "LESS taught the target best (README, Real models and real data).",
)


def format_table(report: dict) -> str:
    labels = list(report["mean_precision"])
    rows = [(family, values, ".3f") for family, values in report["precision"].items()]
    rows += [
        ("mean", report["mean_precision"], ".3f"),
        ("query ms", report["query_ms_mean"], ".1f"),
    ]
    legend = [textwrap.fill(paragraph, 88) for paragraph in LEGEND]
    return "\n".join(
        [
            f"precision at {report['fraction']:.0%} of {report['num_examples']} pool examples "
            f"({report['selected_per_query']} selected per family; chance {report['chance']:.3f})",
            *method_columns("family", labels, rows),
            "",
            *legend,
            f"toy assets {report['assets_s']} s, datastore build {report['build_s']} s",
        ]
    )
