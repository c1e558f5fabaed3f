"""Running the ``gradstore`` command as a user does: a subprocess in a directory of files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

GRADSTORE = str(Path(sys.executable).with_name("gradstore"))
# A tiny build: seconds on 2 cores.
FLAGS = [
    "--lora-r", "4", "--lora-dropout", "0", "--projection-dim", "64", "--max-seq-len", "64",
    "--warmup-fraction", "0.5", "--warmup-epochs", "2", "--warmup-learning-rate", "0.005",
    "--warmup-batch-size", "4", "--warmup-gradient-accumulation", "1", "--batch-size", "4",
    "--methods", "less", "--methods", "random",
]  # fmt: skip


def gradstore(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300):
    """Run ``gradstore args...`` in ``cwd``; the completed process (text output)."""
    environment = {k: v for k, v in os.environ.items() if k != "GRADSTORE_DEBUG"}
    environment |= {"COLUMNS": "80", "OMP_NUM_THREADS": "1"} | (env or {})
    return subprocess.run(
        [GRADSTORE, *args], cwd=cwd, env=environment, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
