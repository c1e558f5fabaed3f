"""Query latency on the toy datastore: p50/p95 of warm selections, per method.

Builds (or reuses) the demo's datastore, warms the query engine once per method (the engine
loads only what each method needs, so the first query of a method pays its loading), then times
``--repeats`` selections per toy family with the library call the service makes, and,
with ``--http``, the same through a running service's ``POST /v1/datastores/{id}/select``.

    python bench/query_latency.py --json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from gradstore.demo.toy import TARGETS_PER_FAMILY, run_demo
from gradstore.query import QueryEngine
from gradstore.selection import METHODS, run_selection
from gradstore.store.datastore import Datastore


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work-dir", type=Path, default=Path(".gradstore/demo"))
    parser.add_argument("--per-family", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fraction", type=float, default=0.05)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    report = run_demo(args.work_dir, per_family=args.per_family, progress=not args.json)
    from gradstore.examples import load_examples
    from gradstore.toy.corpus import FAMILIES

    started = time.perf_counter()
    engine = QueryEngine(Datastore.open(report["store"]))
    load_s = time.perf_counter() - started
    targets = load_examples(report["targets"])
    results = {}
    for method in METHODS:
        run_selection(engine, targets[:TARGETS_PER_FAMILY], method=method, fraction=args.fraction)
        latencies, phases = [], {}
        for _ in range(args.repeats):
            for family in FAMILIES:
                chosen = [t for t in targets if t.subtask == family]
                result = run_selection(engine, chosen, method=method, fraction=args.fraction)
                latencies.append(result.timings_ms["total"])
                for phase, ms in result.timings_ms.items():
                    phases.setdefault(phase, []).append(ms)
        results[method] = {
            "p50_ms": round(percentile(latencies, 0.5), 1),
            "p95_ms": round(percentile(latencies, 0.95), 1),
            "phases_p50_ms": {k: round(statistics.median(v), 1) for k, v in phases.items()},
            "queries": len(latencies),
        }
    out = {
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads",
        "pool_examples": report["num_examples"],
        "targets_per_query": TARGETS_PER_FAMILY,
        "checkpoints": len(engine.manifest.checkpoints),
        "dim": engine.manifest.dim,
        "engine_load_s": round(load_s, 2),
        "methods": results,
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
