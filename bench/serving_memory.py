"""Peak RSS and model loads of one process serving every method (and a build unit), one run.

A store serving every method is built once (``--model``: a local HF directory, e.g.
SmolLM2-135M-Instruct; small pool, short examples: the model is what is measured). Then a
fresh process does what an embedded server or a worker + API process does on it: one
artifact unit of the build (``hidden_states``, through the build's model), then a query of
every method, RDS+ (base model only) first. It reports its peak resident memory (from the
kernel at exit) and how many times base weights were loaded. Run it with another checkout
first on ``PYTHONPATH`` to measure that code on the same store:

    python bench/serving_memory.py --model DIR --work-dir W --json           # build + measure
    PYTHONPATH=/other/checkout python bench/serving_memory.py --work-dir W --json   # reuse

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def serve_every_method(store: Path) -> dict:
    """In this process: a build unit, then every method; count base-weight loads and the
    base models still alive at the end."""
    from transformers import PreTrainedModel

    import gradstore.features.checkpoint_model
    import gradstore.features.modeling
    from gradstore.artifacts import compute_artifact_unit, plan_artifact_units
    from gradstore.examples import read_jsonl
    from gradstore.query import QueryEngine
    from gradstore.selection import METHODS, run_selection
    from gradstore.store.datastore import Datastore

    loads = []
    real = gradstore.features.modeling.load_base_model

    def counting(*args, **kwargs):
        loads.append(str(args[0]))
        return real(*args, **kwargs)

    gradstore.features.modeling.load_base_model = counting  # type: ignore[assignment]
    gradstore.features.checkpoint_model.load_base_model = counting  # type: ignore[attr-defined]
    started = time.perf_counter()
    unit = plan_artifact_units(store, "hidden_states")[0]
    compute_artifact_unit(store, unit, "cpu", None)
    pool = read_jsonl(store / "examples.jsonl")
    targets = [e.model_copy(update={"id": f"t{i}"}) for i, e in enumerate(pool[:2])]
    engine = QueryEngine(Datastore.open(store), "cpu")
    methods = ["rds", *sorted(set(METHODS) - {"rds"})]
    for method in methods:
        run_selection(engine, targets, method, top_k=2)
    gc.collect()
    models = [
        m for m in gc.get_objects() if isinstance(m, PreTrainedModel) and hasattr(m, "lm_head")
    ]
    return {
        "methods": methods,
        "base_weight_loads": len(loads),
        "base_models_alive_at_end": len(models),
        "rss_at_end_mb": round(_rss_kb() / 1024),
        "seconds": round(time.perf_counter() - started, 1),
        "gradstore": str(Path(gradstore.features.modeling.__file__).parent),
    }


def build(model: Path, work: Path, size: int, max_seq_len: int) -> Path:
    from gradstore.build import build_all
    from gradstore.config import BuildConfig
    from gradstore.demo.real import real_setting
    from gradstore.examples import write_jsonl
    from gradstore.selection import METHODS

    setting = real_setting(per_source=size, targets_per_category=1)
    write_jsonl(setting.pool[:size], work / "pool.jsonl")
    config = BuildConfig.model_validate(
        {
            "max_seq_len": max_seq_len,
            "warmup": {"epochs": 1},
            "projection": {"dim": 1024},
            "delift": {"neighbours": 2},
        }
    )
    build_all(
        work / "store", work / "pool.jsonl", model, config, progress=False, methods=sorted(METHODS)
    )
    return work / "store"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="Build the store with this model first.")
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--size", type=int, default=8, help="Pool examples of the store.")
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    store = args.work_dir / "store"
    if args.serve:
        print(json.dumps(serve_every_method(store)))
        return
    if args.model is not None and not store.exists():
        args.work_dir.mkdir(parents=True, exist_ok=True)
        build(args.model, args.work_dir, args.size, args.max_seq_len)
    command = [sys.executable, __file__, "--serve", "--work-dir", str(args.work_dir)]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    assert process.stdout is not None and process.stderr is not None
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(process.stderr.read().decode()[-3000:])
    result = json.loads(process.stdout.read().decode().strip().splitlines()[-1])
    result |= {"peak_rss_mb": round(usage.ru_maxrss / 1024), "machine": platform.machine()}
    print(json.dumps(result) if args.json else result)


if __name__ == "__main__":
    main()
