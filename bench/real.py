"""Every selection method on a real pretrained model and real data: quality, cost, speed.

The setting is the real demo's (``gradstore/demo/real.py``): a pool of Arena-Hard's answered
prompts (coding, math, creative_writing) plus AlpacaEval ("general"); targets GSM8K CoT
exemplars (math), HumanEval problems with canonical solutions (coding) and Arena-Hard writing
prompts held out of the pool (creative_writing). For each target category and method, with a
budget of ``--fraction`` of the pool:
- the share of the selection in the target's own category (chance: the category's share);
- the held-out loss after a fresh LoRA fine-tune on the selection, beside a random selection
  of the same size, the full pool and no fine-tuning (held-out targets: exemplars the
  selection never saw);
- build seconds per stage and peak RSS (the build runs in a child process), store bytes, and
  query latency per method (cold: a fresh engine's first query; warm: median of the rest);
- featurize speed: tokens/s of the store's featurizer against a plain batched LoRA
  forward+backward over the same batches (the model-bound limit), interleaved, one thread.

    python bench/real.py --model DIR --json   # the figures of docs/benchmarks.md (an hour)
    python bench/real.py --model DIR --pool-per-source 750 --max-seq-len 512 --json  # a GPU

The JSON report is the last line of the output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from gradstore.demo.real import CATEGORIES, METHODS, chance, measure_methods, real_setting
from gradstore.examples import write_jsonl
from gradstore.features.modeling import load_tokenizer
from gradstore.features.tokenization import ExampleEncoder, pad_token_id
from gradstore.store.datastore import Datastore, TokenStore
from gradstore.threads import use_threads
from gradstore.toy.finetune import fine_tune, target_loss


def machine() -> str:
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} thread(s)"


def build_in_child(args, store: Path, pool_file: Path) -> dict:
    """Run the build stages in a child process: seconds per stage and its peak RSS (what a
    build costs, without the benchmark's own imports and data)."""
    command = [
        sys.executable, __file__, "--build-only", "--model", str(args.model),
        "--store", str(store), "--pool-file", str(pool_file),
        "--build-config", json.dumps(build_config(args)),
    ]  # fmt: skip
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = child.communicate()
    if child.returncode != 0:
        raise SystemExit(f"build failed:\n{err[-4000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mb"] = result.pop("child_peak_rss_mb")
    return result


def build_config(args) -> dict:
    return {
        "lora": {"r": args.lora_r},
        "warmup": {
            "fraction": args.warmup_fraction,
            "epochs": args.checkpoints,
            "learning_rate": args.warmup_learning_rate,
            "batch_size": 8,
            "gradient_accumulation": 1,
        },
        "projection": {"dim": args.dim},
        "max_seq_len": args.max_seq_len,
        "batch_tokens": args.batch_tokens,
        "pool_features": ["adam", "sgd"],
        "delift": {"neighbours": args.delift_neighbours},
        "methods": sorted({m for _, m, _ in METHODS if m in args.methods}),
    }


def timed_build(model: Path, store: Path, pool_file: Path, config_json: str) -> dict:
    """The build's stages one after another, each timed (runs in the child)."""
    from gradstore.artifacts import add_artifacts
    from gradstore.build import (
        build_index,
        featurize_shard,
        plan_shards,
        prepare,
        run_warmup_stage,
    )
    from gradstore.config import BuildConfig
    from gradstore.selection import extra_artifacts

    config = BuildConfig.model_validate_json(config_json)
    seconds = {}
    started = time.perf_counter()
    summary = prepare(store, pool_file, model, config)
    seconds["prepare"] = time.perf_counter() - started
    started = time.perf_counter()
    run_warmup_stage(store, progress=False)
    seconds["warmup"] = time.perf_counter() - started
    started = time.perf_counter()
    for shard in plan_shards(store):
        featurize_shard(store, shard)
    seconds["featurize"] = time.perf_counter() - started
    started = time.perf_counter()
    build_index(store)
    seconds["index"] = time.perf_counter() - started
    started = time.perf_counter()
    add_artifacts(store, extra_artifacts(config.methods or []), progress=False)
    seconds["artifacts"] = time.perf_counter() - started
    return {
        "child_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "examples": summary.num_examples,
        "skipped": len(summary.skipped),
        "truncated": summary.truncated,
    }


def store_bytes(store: Path) -> int:
    return sum(p.stat().st_size for p in store.rglob("*") if p.is_file())


def measure_losses(model, encoder, pool, held_out, selections, epochs) -> dict:
    """{category: {label: held-out loss}}: each method's selection, the full pool, none."""
    pad = pad_token_id(encoder.tokenizer)
    by_id = {e.id: e for e in pool}
    evaluation = {c: encoder.encode_all(held_out[c], eos=False)[0] for c in CATEGORIES}
    losses: dict[str, dict[str, float]] = {c: {} for c in CATEGORIES}
    for label, chosen in selections.items():
        for name in CATEGORIES:
            train, _ = encoder.encode_all([by_id[i] for i in chosen[name]])
            tuned = fine_tune(model, train, pad, epochs)
            losses[name][label] = round(target_loss(tuned, evaluation[name], pad), 4)
    everything, _ = encoder.encode_all(pool)
    for label, train, rounds in (("full pool", everything, epochs), ("no fine-tuning", [], 0)):
        tuned = fine_tune(model, train, pad, rounds)
        for name in CATEGORIES:
            losses[name][label] = round(target_loss(tuned, evaluation[name], pad), 4)
    return losses


def measure_speed(
    store: Path, model_dir: Path, repeats: int, rows: int, batch_rows: int, bergson: str | None
) -> dict:
    """Tokens/s of the store's featurizer (LESS's Adam features), of a plain batched LoRA
    forward+backward over the same batches (the model-bound limit) and, given its venv's
    python, of bergson on the same model, adapter and tokens; interleaved rounds."""
    from gradstore.features.losses import completion_losses
    from gradstore.features.tokenization import collate
    from gradstore.store.model_pool import store_model

    datastore = Datastore.open(store)
    model = store_model(store)
    count = min(rows, datastore.manifest.num_examples)
    # shortest first, batch_rows at a time: the same batches for every contender
    examples = sorted(TokenStore(store).slice(0, count), key=lambda e: len(e.input_ids))
    batches = [examples[i : i + batch_rows] for i in range(0, len(examples), batch_rows)]
    tokens = sum(len(e.input_ids) for e in examples)
    checkpoint = datastore.manifest.checkpoints[-1].index
    unbounded = batch_rows * max(len(e.input_ids) for e in examples)

    def featurize() -> None:
        featurizer = model.featurizer(checkpoint, batch_rows, True, unbounded)
        featurizer.featurize(examples, ("adam",))

    def with_update() -> None:  # LESS's Γ and Influence Distillation's a ⊙ g, one backward
        featurizer = model.featurizer(checkpoint, batch_rows, True, unbounded, update=True)
        featurizer.featurize(examples, ("adam", "update"))

    def plain() -> None:
        model.activate(checkpoint)
        for batch in batches:
            completion_losses(model.model, collate(batch, model.pad_token_id)).sum().backward()
        model.model.zero_grad(set_to_none=True)

    contenders: dict[str, Callable[[], float | None]] = {
        "featurize": featurize, "featurize + update": with_update, "plain": plain,
    }  # fmt: skip
    if bergson:
        work = Path(tempfile.mkdtemp(prefix="gradstore-bergson-"))
        records = [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]
        (work / "tokens.json").write_text(json.dumps(records))
        command = [
            bergson, str(Path(__file__).with_name("peer_bergson.py")),
            "--model", str(model_dir),
            "--adapter", str(store / "checkpoints" / f"ckpt-{checkpoint}"),
            "--examples", str(work / "tokens.json"), "--dim", str(datastore.manifest.dim),
            "--batch-size", str(batch_rows), "--threads", str(torch.get_num_threads()),
            "--repeats", "1", "--json",
        ]  # fmt: skip

        def peer() -> float:
            """bergson's own timing of its pass (its imports and model load left out)."""
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            rate = json.loads(done.stdout.strip().splitlines()[-1])["examples_per_s"][0]
            return tokens / (len(examples) / rate)

        contenders["bergson"] = peer
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    featurize()  # warm-up: projector and caches
    for _ in range(repeats):
        for name, run in contenders.items():
            started = time.perf_counter()
            own_rate = run()
            rates[name].append(own_rate or tokens / (time.perf_counter() - started))
    median = {k: statistics.median(v) for k, v in rates.items()}
    result = {
        "tokens": tokens,
        "examples": len(examples),
        "batch_rows": batch_rows,
        "tokens_per_s": {k: [round(r, 1) for r in v] for k, v in rates.items()},
        "ratio_to_limit": round(median["featurize"] / median["plain"], 3),
        "update_head_extra": round(median["featurize"] / median["featurize + update"] - 1, 3),
    }
    if bergson:
        result["ratio_to_bergson"] = round(median["featurize"] / median["bergson"], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="A local HF model directory.")
    parser.add_argument("--work-dir", type=Path, default=Path(".gradstore/bench-real"))
    parser.add_argument(
        "--pool-per-source", type=int, default=40, help="Examples per category and of AlpacaEval."
    )
    parser.add_argument("--targets-per-category", type=int, default=4)
    parser.add_argument("--fraction", type=float, default=0.05)
    parser.add_argument("--max-seq-len", type=int, default=256)
    parser.add_argument("--batch-tokens", type=int, default=512)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--checkpoints", type=int, default=2, help="Warmup epochs.")
    parser.add_argument("--warmup-fraction", type=float, default=0.25)
    parser.add_argument("--warmup-learning-rate", type=float, default=2e-4)
    parser.add_argument("--delift-neighbours", type=int, default=4)
    parser.add_argument("--methods", default=",".join(dict.fromkeys(m for _, m, _ in METHODS)))
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--no-finetune", action="store_true")
    parser.add_argument("--speed-rows", type=int, default=32)
    parser.add_argument("--speed-batch-rows", type=int, default=4)
    parser.add_argument("--bergson-python", help="Python of a venv with bergson (speed only).")
    parser.add_argument("--speed-only", action="store_true", help="Only the speed, on --store.")
    parser.add_argument("--speed-repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    # the child process of build_in_child
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--pool-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--build-config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    use_threads(args.threads)
    if args.build_only:
        print(json.dumps(timed_build(args.model, args.store, args.pool_file, args.build_config)))
        return
    args.methods = [m for m in args.methods.split(",") if m]
    if args.speed_only:
        speed = measure_speed(
            args.store, args.model, args.speed_repeats, args.speed_rows,
            args.speed_batch_rows, args.bergson_python,
        )  # fmt: skip
        print(json.dumps({"machine": machine(), "speed": speed}))
        return

    args.work_dir.mkdir(parents=True, exist_ok=True)
    setting = real_setting(args.pool_per_source, args.targets_per_category, args.seed)
    pool, category, held_out = setting.pool, setting.category, setting.held_out
    pool_file = args.work_dir / "pool.jsonl"
    write_jsonl(pool, pool_file)
    store = args.work_dir / "store"
    if store.exists():
        shutil.rmtree(store)
    build = build_in_child(args, store, pool_file)
    build["store_bytes"] = store_bytes(store)
    rows = [row for row in METHODS if row[1] in args.methods]
    methods = measure_methods(store, setting, args.fraction, rows)
    losses = {}
    if not args.no_finetune:
        encoder = ExampleEncoder(load_tokenizer(args.model), args.max_seq_len)
        selections = {label: r["selected"] for label, r in methods.items()}
        losses = measure_losses(
            args.model, encoder, pool, held_out, selections, args.finetune_epochs
        )
    speed = measure_speed(
        store, args.model, args.speed_repeats, args.speed_rows, args.speed_batch_rows,
        args.bergson_python,
    )  # fmt: skip
    report = {
        "machine": machine(),
        "model": str(args.model),
        "pool": len(pool),
        "pool_by_category": {
            c: sum(v == c for v in category.values()) for c in (*CATEGORIES, "general")
        },
        "chance": {c: round(v, 3) for c, v in chance(setting).items()},
        "targets": {c: len(setting.targets[c]) for c in CATEGORIES},
        "held_out": {c: len(held_out[c]) for c in CATEGORIES},
        "config": build_config(args),
        "build": build,
        "methods": {k: {f: v for f, v in r.items() if f != "selected"} for k, r in methods.items()},
        "losses": losses,
        "speed": speed,
    }
    for label, result in report["methods"].items():
        print(
            f"{label:24s} share {result['share']}  cold {result['cold_ms']:.0f} ms  "
            f"warm {result['warm_ms']:.0f} ms  loss {[losses[c].get(label) for c in losses]}"
        )
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
