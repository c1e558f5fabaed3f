"""Peak RSS of a real-model build serving every method, at two pool sizes, one run.

Each build is its own ``gradstore build`` process (as a user runs it), on a real model
(SmolLM2-135M-Instruct by default) with real long examples (Arena-Hard answered prompts and
AlpacaEval, cut to ``--max-seq-len``), every selection method's artifacts; its peak resident
memory is read from the kernel when it exits. What could grow with the pool (tokens,
features, artifacts, checksums) is all there; what must not (activations, logits, model
copies) is bounded by ``batch_tokens`` and the one model per process.

    python bench/real_memory.py --model DIR --json

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gradstore.demo.real import real_setting
from gradstore.examples import write_jsonl
from gradstore.selection import METHODS


def run_measured(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run ``command``; return (peak RSS in MiB, seconds) of that process alone."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ | env
    )
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"build failed: {process.stderr.read().decode()[-3000:]}")  # type: ignore[union-attr]
    return usage.ru_maxrss / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="A local HF model directory.")
    parser.add_argument("--sizes", default="16,48", help="Pool sizes, comma-separated.")
    parser.add_argument("--max-seq-len", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="Print one JSON line.")
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="gradstore-bench-real-memory-"))
    setting = real_setting(per_source=max(sizes), targets_per_category=4)
    runs = []
    for n in sizes:
        pool = work / f"pool-{n}.jsonl"
        write_jsonl(setting.pool[:n], pool)
        command = [
            sys.executable, "-m", "gradstore.cli", "build", "--dataset", str(pool),
            "--model", str(args.model), "--out", str(work / f"store-{n}"),
            "--lora-r", "8", "--warmup-fraction", "0.25", "--warmup-epochs", "1",
            "--warmup-learning-rate", "2e-4", "--warmup-gradient-accumulation", "1",
            "--projection-dim", "1024", "--max-seq-len", str(args.max_seq_len),
            "--delift-neighbours", "2", "--methods", *sorted(METHODS),
        ]  # fmt: skip
        env = {"GRADSTORE_TORCH_THREADS": str(args.threads)}
        peak_mb, seconds = run_measured(command, env)
        tokens = json.loads((work / f"store-{n}" / "manifest.json").read_text())["num_examples"]
        runs.append({"examples": tokens, "peak_rss_mb": round(peak_mb), "seconds": round(seconds)})
        print(runs[-1], flush=True)
    result = {
        "benchmark": "real_memory",
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, {args.threads} threads",
        "model": str(args.model),
        "max_seq_len": args.max_seq_len,
        "methods": sorted(METHODS),
        "runs": runs,
        "rss_growth": round(runs[-1]["peak_rss_mb"] / runs[0]["peak_rss_mb"] - 1, 4),
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
