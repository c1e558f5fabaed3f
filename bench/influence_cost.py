"""What in2core and influence_distillation cost beside LESS, on the same toy store, one run.

On the quality benchmark's standard toy store (built or reused by ``gradstore.demo.toy``):
- per query (8 targets, 5%): the median warm latency of each method and its ratio to LESS's;
- per pool example, building: seconds of each artifact's unit (re-computed on a copy of the
  first unit) against the LESS gradient features of the same rows at every checkpoint;
- per pool example, storing: bytes of each artifact against the LESS features;
- landmark mode against exact: Pearson and mean per-target Spearman of the score matrices
  for a few landmark counts.

``--census``: instead, build a small toy store serving every method and count the pool
rows each gradient pass of the build ran: the featurize backward (every head, a ⊙ g
included) per checkpoint, a second full backward for Influence Distillation's
``update_directions`` (none since featurize writes it), In2Core's truncated one.

    python bench/influence_cost.py --json     # a few minutes on 2 cores
    python bench/influence_cost.py --census --json
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr

from gradstore.artifacts import ARTIFACTS, plan_artifact_units
from gradstore.demo.toy import toy_store
from gradstore.examples import read_jsonl
from gradstore.query import QueryEngine
from gradstore.selection import run_selection, validate_request
from gradstore.selection.base import ScoreRequest
from gradstore.store.datastore import Datastore, TokenStore, load_build_spec
from gradstore.toy.corpus import generate_targets

QUERIES = [
    ("less", "less", {}),
    ("in2core", "in2core", {}),
    ("influence_distillation (exact)", "influence_distillation", {}),
    ("influence_distillation (landmark 128)", "influence_distillation",
     {"mode": "landmark", "landmarks": 128}),
    ("rds", "rds", {}),
]  # fmt: skip


def warm_ms(engine, targets, method, options, repeats: int) -> float:
    run_selection(engine, targets, method, fraction=0.05, options=options)
    times = [
        run_selection(engine, targets, method, fraction=0.05, options=options).timings_ms["total"]
        for _ in range(repeats)
    ]
    return statistics.median(times)


def artifact_bytes(store: Path, datastore: Datastore) -> dict[str, float]:
    n = datastore.num_examples
    out = {}
    for name, entry in datastore.manifest.artifacts.items():
        out[name] = sum((store / f).stat().st_size for f in entry.files) / n
    return out


def build_seconds_per_example(store: Path, rows: int) -> dict[str, float]:
    """Each model-based artifact's unit computation, and LESS's features, on the same rows."""
    from gradstore.features.checkpoint_model import CheckpointModel
    from gradstore.features.checkpoints import load_checkpoints

    spec = load_build_spec(store)
    out = {}
    for name in ("layer_gradients", "update_directions", "hidden_states"):
        unit = plan_artifact_units(store, name)[0]
        unit = type(unit)(name, 0, min(rows, unit.end))
        ARTIFACTS[name].compute(store, spec, unit, None, None)  # loads the model
        started = time.perf_counter()
        ARTIFACTS[name].compute(store, spec, unit, None, None)
        out[name] = (time.perf_counter() - started) / (unit.end - unit.start)
    checkpoints = load_checkpoints(store / "checkpoints")
    model = CheckpointModel(spec.model.path, checkpoints, spec.config.projection)
    examples = TokenStore(store).slice(0, rows)
    started = time.perf_counter()
    for c in checkpoints:
        model.featurizer(c.index, spec.config.batch_size, adam=True).featurize(examples, ("adam",))
    out["gradients.adam (LESS, every checkpoint)"] = (time.perf_counter() - started) / rows
    return out


def landmark_agreement(engine, targets, counts) -> dict[str, dict[str, float]]:
    def matrix(options):
        method, parsed = validate_request("influence_distillation", options)
        request = ScoreRequest(targets, parsed, engine.manifest.num_examples, True)
        return method.score(engine, request).scores

    exact = matrix({})
    out = {}
    for embeddings, count in itertools.product(("hidden_states", "gradients.sgd"), counts):
        approx = matrix({"mode": "landmark", "landmarks": count, "embeddings": embeddings})
        out[f"{embeddings}, L={count}"] = {
            "pearson": round(float(pearsonr(exact.ravel(), approx.ravel()).statistic), 3),
            "spearman": round(
                float(
                    np.mean(
                        [
                            spearmanr(exact[:, j], approx[:, j]).statistic
                            for j in range(exact.shape[1])
                        ]
                    )
                ),
                3,
            ),
        }
    return out


def backward_census(work_dir: Path, per_family: int) -> dict:
    """Rows through each gradient pass while a toy store serving every method is built."""
    from collections import Counter

    from gradstore.features.gradients import LoraGradientComputer
    from gradstore.features.layer_gradients import LayerFeaturizer
    from gradstore.selection import METHODS

    rows: Counter[str] = Counter()
    lora_pass = LoraGradientComputer.for_each_module
    layer_pass = LayerFeaturizer.featurize
    separate = ARTIFACTS["update_directions"].compute

    inside_layers = [False]  # In2Core's truncated backward runs the same per-module pass

    def count_lora(self, batch, consume):
        if not inside_layers[0]:
            rows["featurize backward (LoRA, all heads)"] += int(batch["input_ids"].shape[0])
        return lora_pass(self, batch, consume)

    def count_layers(self, examples, *args, **kwargs):
        rows["in2core truncated backward (layer subset)"] += len(examples)
        inside_layers[0] = True
        try:
            return layer_pass(self, examples, *args, **kwargs)
        finally:
            inside_layers[0] = False

    def count_separate(root, spec, unit, *args, **kwargs):
        rows["update_directions second backward"] += unit.end - unit.start
        return separate(root, spec, unit, *args, **kwargs)

    LoraGradientComputer.for_each_module = count_lora  # type: ignore[method-assign]
    LayerFeaturizer.featurize = count_layers  # type: ignore[method-assign]
    ARTIFACTS["update_directions"].compute = count_separate  # type: ignore[method-assign]
    setting = toy_store(work_dir, per_family=per_family, progress=False, methods=sorted(METHODS))
    manifest = Datastore.open(setting.store).manifest
    n, checkpoints = manifest.num_examples, len(manifest.checkpoints)
    return {
        "benchmark": "influence_cost --census",
        "num_examples": n,
        "checkpoints": checkpoints,
        "methods": sorted(METHODS),
        "rows": dict(rows),
        "featurize_backward_per_example_per_checkpoint": round(
            rows["featurize backward (LoRA, all heads)"] / (n * checkpoints), 3
        ),
        "update_directions_rows_in_a_second_pass": rows["update_directions second backward"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work-dir", type=Path, default=Path(".gradstore/quality"))
    parser.add_argument("--rows", type=int, default=64, help="Rows timed per artifact.")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--census", action="store_true", help="Count the build's backwards.")
    parser.add_argument("--per-family", type=int, default=20, help="Census pool per family.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.census:
        print(json.dumps(backward_census(args.work_dir / "census", args.per_family)))
        return

    setting = toy_store(args.work_dir, progress=not args.json)
    pool = read_jsonl(setting.corpus)
    targets = [
        t for t in generate_targets(1, 8, exclude=pool) if t.subtask == "add"
    ]  # one family's 8 targets, as each quality query
    engine = QueryEngine(Datastore.open(setting.store))
    latency = {
        label: round(warm_ms(engine, targets, method, options, args.repeats), 1)
        for label, method, options in QUERIES
    }
    storage = artifact_bytes(setting.store, engine.datastore)
    less_bytes = (
        sum(
            (setting.store / f).stat().st_size
            for key, files in engine.manifest.shards.items()
            if key.endswith("/adam")
            for f in files
        )
        / engine.manifest.num_examples
    )
    build = build_seconds_per_example(setting.store, args.rows)
    report = {
        "benchmark": "influence_cost",
        "machine": f"{platform.machine()} CPU, 1 torch thread",
        "num_examples": engine.manifest.num_examples,
        "checkpoints": len(engine.manifest.checkpoints),
        "warm_ms": latency,
        "ratio_to_less": {k: round(v / latency["less"], 2) for k, v in latency.items()},
        "bytes_per_example": {k: round(v) for k, v in storage.items()}
        | {"gradients.adam (LESS)": round(less_bytes)},
        "build_ms_per_example": {k: round(v * 1000, 2) for k, v in build.items()},
        "landmark_vs_exact": landmark_agreement(engine, targets, (32, 128, 512)),
    }
    if not args.json:
        print(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
