"""Build peak RSS against pool size: a real ``gradstore build`` at two sizes, one run.

Each build is its own process (the CLI, as a user runs it) and its peak resident memory
is read from the kernel when it exits. The pool is the toy corpus at 1,200 and 48,000
examples (``--quick``: 1,200 and 9,600), on the tiny toy model with a one-epoch warmup, so
that the run fits minutes on 2 cores: RAM is what is measured, and what could grow with
the pool (the examples, their tokens, features, index, checksums) is all there.

    python bench/build_memory.py --json

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

SIZES = (1_200, 48_000)
QUICK_SIZES = (1_200, 9_600)


def run_measured(command: list[str]) -> tuple[float, float]:
    """Run ``command``; return (peak RSS in MiB, seconds) of that process alone."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{command[3]} failed: {process.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024, seconds


def gradstore(*args: str) -> list[str]:
    return [sys.executable, "-m", "gradstore.cli", *args]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,200 and 9,600 examples.")
    parser.add_argument("--json", action="store_true", help="Print one JSON line.")
    args = parser.parse_args()
    sizes = QUICK_SIZES if args.quick else SIZES
    work = Path(tempfile.mkdtemp(prefix="gradstore-bench-build-"))
    corpus = work / "model-corpus.jsonl"
    subprocess.run(gradstore("toy", "corpus", "--out", str(corpus), "--per-family", "50"),
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run(
        gradstore("toy", "model", "--out", str(work / "model"), "--corpus", str(corpus),
                  "--size", "tiny", "--steps", "20"),
        check=True, capture_output=True,
    )  # fmt: skip
    runs = []
    for n in sizes:
        pool = work / f"pool-{n}.jsonl"
        subprocess.run(
            gradstore("toy", "corpus", "--out", str(pool), "--per-family", str(n // 8),
                      "--seed", "1"),
            check=True, capture_output=True,
        )  # fmt: skip
        peak_mb, seconds = run_measured(
            gradstore(
                "build", "--dataset", str(pool), "--model", str(work / "model"),
                "--out", str(work / f"store-{n}"), "--lora-r", "8", "--learning-rate", "1e-3",
                "--gradient-accumulation", "1", "--epochs", "1", "--max-seq-len", "128",
            )
        )  # fmt: skip
        runs.append({"examples": n, "peak_rss_mb": round(peak_mb, 1), "seconds": round(seconds)})
    result = {
        "benchmark": "build_memory",
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
        "runs": runs,
        "rss_growth": round(runs[-1]["peak_rss_mb"] / runs[0]["peak_rss_mb"] - 1, 4),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
