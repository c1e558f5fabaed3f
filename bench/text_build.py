"""A store for the text methods (bm25, dsir, random) without a model, beside a LESS build.

Both are real ``gradstore build`` processes (the CLI, as a user runs it) over the same toy
pool, interleaved and repeated: the text build (no ``--model``: no tokenising, warmup or
featurize; DSIR's n-gram counts are its one artifact) and a build of the default methods
on the tiny toy model with a one-epoch warmup. Wall seconds of each process, median.

    OMP_NUM_THREADS=1 python bench/text_build.py --json

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def gradstore(*args: str) -> list[str]:
    return [sys.executable, "-m", "gradstore.cli", *args]


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{command[3:6]} failed: {done.stderr[-2000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1_200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="Print one JSON line.")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gradstore-bench-text-"))
    corpus = work / "model-corpus.jsonl"
    subprocess.run(gradstore("toy", "corpus", "--out", str(corpus), "--per-family", "50"),
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run(
        gradstore("toy", "model", "--out", str(work / "model"), "--corpus", str(corpus),
                  "--size", "tiny", "--steps", "20"),
        check=True, capture_output=True,
    )  # fmt: skip
    pool = work / "pool.jsonl"
    subprocess.run(
        gradstore("toy", "corpus", "--out", str(pool), "--per-family",
                  str(args.examples // 8), "--seed", "1"),
        check=True, capture_output=True,
    )  # fmt: skip
    text = gradstore("build", "--dataset", str(pool), "--out", str(work / "text"),
                     "--methods", "bm25", "--methods", "dsir", "--methods", "random")  # fmt: skip
    full = gradstore(
        "build", "--dataset", str(pool), "--model", str(work / "model"),
        "--out", str(work / "full"), "--lora-r", "8", "--learning-rate", "1e-3",
        "--gradient-accumulation", "1", "--epochs", "1", "--max-seq-len", "128",
    )  # fmt: skip
    seconds: dict[str, list[float]] = {"text": [], "default": []}
    for _ in range(args.repeats):
        for name, command in (("text", text), ("default", full)):
            shutil.rmtree(work / ("text" if name == "text" else "full"), ignore_errors=True)
            seconds[name].append(timed(command))
    median = {name: statistics.median(values) for name, values in seconds.items()}
    result = {
        "benchmark": "text_build",
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
        "examples": sum(1 for _ in pool.open()),
        "seconds": {name: [round(s, 2) for s in values] for name, values in seconds.items()},
        "median_s": {name: round(s, 2) for name, s in median.items()},
        "default_over_text": round(median["default"] / median["text"], 1),
    }
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
