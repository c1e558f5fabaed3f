"""Planted near-duplicates: how many copies each method selects, with and without diversity.

The toy pool gets, in every skill family, a seeded tenth of its examples copied ``COPIES``
times (half exact copies, half with one extra space in the prompt: the same example to any
selector, under another ID). Then for every method, with ``diversity`` off and with
``facility_location`` (the defaults, λ = 0.2 and τ = 0.8; λ = 0.1 with τ = 0.9, lighter;
λ = 0.6 with τ = 0.9, copies never beat a new example), each family's targets select 5%:

- redundant picks: selected examples beyond the first of their duplicate group, per query;
- precision: the share of the selection from the target's family (copies count);
- distinct precision: in-family examples selected, each duplicate group once, over k.

Also the cost of DELIFT's kernel artifact (pair forwards, seconds) beside the build's.

    python bench/diversity.py --json          # minutes on 2 cores
    python bench/diversity.py --sweep 0.1,0.2,0.5 0,0.8,0.9   # a λ × τ grid instead
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from pathlib import Path

import torch

from gradstore.build import build_all
from gradstore.demo.toy import METHODS, TARGETS_PER_FAMILY
from gradstore.examples import Example, read_jsonl, write_jsonl
from gradstore.query import QueryEngine
from gradstore.selection import METHODS as REGISTERED
from gradstore.selection import run_selection
from gradstore.store.datastore import MANIFEST, Datastore
from gradstore.threads import threads_per_process, use_threads
from gradstore.toy.corpus import FAMILIES, family_of, generate_targets
from gradstore.toy.model import ensure_toy_assets

COPIES = 3
SETTINGS = {
    "off": {},
    "default": {"diversity": "facility_location"},  # λ = 0.2, τ = 0.8
    "λ=0.1 τ=0.9": {
        "diversity": "facility_location",
        "diversity_weight": 0.1,
        "diversity_threshold": 0.9,
    },
    "λ=0.6 τ=0.9": {
        "diversity": "facility_location",
        "diversity_weight": 0.6,
        "diversity_threshold": 0.9,
    },
}


def plant_duplicates(pool: list[Example], seed: int = 0) -> tuple[list[Example], dict[str, str]]:
    """(pool with copies, {example ID: its group's original ID} for every planted group)."""
    rng = random.Random(seed)
    group: dict[str, str] = {}
    out = list(pool)
    for family in FAMILIES:
        members = [e for e in pool if family_of(e) == family]
        for original in rng.sample(members, max(1, len(members) // 10)):
            group[original.id] = original.id
            for c in range(COPIES):
                copy = original.model_copy(update={"id": f"{original.id}-copy{c}"})
                if c % 2 and copy.prompt is not None:
                    copy = copy.model_copy(update={"prompt": copy.prompt.replace(" ", "  ", 1)})
                group[copy.id] = original.id
                out.insert(rng.randrange(len(out) + 1), copy)
    return out, group


def distinct_hits(selected: list[str], group: dict[str, str], family: dict[str, str], want):
    """In-family examples selected, each duplicate group counted once."""
    return len({group.get(i, i) for i in selected if family[i] == want})


def redundant(selected: list[str], group: dict[str, str]) -> int:
    seen: dict[str, int] = {}
    for example_id in selected:
        if example_id in group:
            seen[group[example_id]] = seen.get(group[example_id], 0) + 1
    return sum(count - 1 for count in seen.values())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work-dir", type=Path, default=Path(".gradstore/diversity"))
    parser.add_argument("--per-family", type=int, default=50)
    parser.add_argument("--pretraining-steps", type=int, default=250)
    parser.add_argument("--fraction", type=float, default=0.05)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--sweep", nargs=2, metavar=("WEIGHTS", "THRESHOLDS"),
        help="Comma-separated λ and τ values: their grid replaces the settings (DELIFT, whose "
        "selection the policy does not change, is left out).",
    )  # fmt: skip
    args = parser.parse_args()
    settings, methods = SETTINGS, METHODS
    if args.sweep:
        weights, thresholds = ([float(v) for v in arg.split(",")] for arg in args.sweep)
        settings = {"off": {}} | {
            f"λ={w} τ={t}": {
                "diversity": "facility_location",
                "diversity_weight": w,
                "diversity_threshold": t,
            }
            for w in weights
            for t in thresholds
        }
        methods = [m for m in METHODS if m[1] != "delift"]
    use_threads(threads_per_process(1))
    from quality import QUICK  # bench/ is on the path when run as a script

    corpus, model_dir = ensure_toy_assets(
        args.work_dir / "assets", 0, args.per_family, steps=args.pretraining_steps, progress=False
    )
    pool, group = plant_duplicates(read_jsonl(corpus))
    store = args.work_dir / f"store-dup-{args.per_family}"
    build_s = kernel_s = None
    if not (store / MANIFEST).exists():
        write_jsonl(pool, args.work_dir / "pool-dup.jsonl")
        started = time.perf_counter()
        build_all(store, args.work_dir / "pool-dup.jsonl", model_dir, QUICK.config,
                  progress=False, methods=[m for m in REGISTERED if m != "delift"])  # fmt: skip
        build_s = time.perf_counter() - started
        from gradstore.artifacts import add_artifacts

        started = time.perf_counter()
        add_artifacts(store, ["delift_kernel"])
        kernel_s = time.perf_counter() - started
        (store / "bench-timings.json").write_text(json.dumps([build_s, kernel_s]))
    elif (store / "bench-timings.json").exists():
        build_s, kernel_s = json.loads((store / "bench-timings.json").read_text())
    pool_family = {e.id: family_of(e) for e in pool}
    targets = generate_targets(1, TARGETS_PER_FAMILY, exclude=pool)
    engine = QueryEngine(Datastore.open(store))
    rows = {}
    for label, method, options in methods:
        for setting, extra in settings.items():
            dup, precision, distinct = [], [], []
            for family in FAMILIES:
                result = run_selection(
                    engine, [t for t in targets if t.subtask == family], method,
                    fraction=args.fraction, options=options | extra,
                )  # fmt: skip
                ids = [s.id for s in result.selected]
                dup.append(redundant(ids, group))
                precision.append(sum(pool_family[i] == family for i in ids) / len(ids))
                distinct.append(distinct_hits(ids, group, pool_family, family) / len(ids))
            rows[f"{label} | {setting}"] = {
                "redundant_per_query": round(statistics.fmean(dup), 2),
                "precision": round(statistics.fmean(precision), 3),
                "distinct_precision": round(statistics.fmean(distinct), 3),
            }
            print(f"{label:18s} {setting:12s} {rows[f'{label} | {setting}']}", flush=True)
    n = len(pool)
    report = {
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "num_examples": n,
        "planted_copies": sum(1 for k, v in group.items() if k != v),
        "selected_per_query": max(1, round(args.fraction * n)),
        "rows": rows,
        "build_s_without_delift": None if build_s is None else round(build_s, 1),
        "delift_kernel_s": None if kernel_s is None else round(kernel_s, 1),
        "delift_pair_forwards": n * (min(QUICK.config.delift.neighbours, n - 1) + 1),
    }
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
