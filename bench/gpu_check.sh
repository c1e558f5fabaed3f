#!/usr/bin/env bash
# Every CUDA check and GPU benchmark in one run, for a GPU host: the `gpu` tests (projection
# identical on CPU and CUDA, features equal to the CPU reference, FAISS GPU = CPU answers),
# build throughput and MFU on a random ~0.5B Llama at 512 tokens, and the GPU search at pool
# scale. Results go to $OUT (or ./gpu-results); each benchmark's last line is its JSON.
# The search store is written to disk first: 300,000 examples × 4 checkpoints = 19.7 GB
# (a 1M store needs 65.5 GB of free disk; pass N to change it).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-results}"
n="${1:-300000}"
mkdir -p "$out"
status=0
python -m pytest -m gpu -q -p no:cacheprovider tests/gpu 2>&1 | tee "$out/gpu-tests.log" || status=1
python bench/gpu_build.py --json 2>"$out/gpu_build.err" | tee "$out/gpu_build.json" || status=1
python bench/query.py --n "$n" --device cuda --store-dir /tmp/gradstore-query-store --json \
  2>"$out/query_gpu.err" | tee "$out/query_gpu.json" || status=1
exit "$status"
