"""How many torch CPU threads a process should use when several share the machine's cores.

torch starts one thread per physical core in every process. Two processes that both
compute (an API answering a query while a worker featurizes, or several workers) then
run twice as many threads as cores, and on a small shared CPU that made runs 3–40× slower.
So the processes of one host divide the cores they may use (CPU affinity and a cgroup CPU
quota both count) between them, unless ``GRADSTORE_TORCH_THREADS`` says otherwise.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

THREADS_ENV = "GRADSTORE_TORCH_THREADS"


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def threads_per_process(processes: int) -> int:
    """The configured thread count, else the available cores divided among ``processes``."""
    configured = os.environ.get(THREADS_ENV)
    if configured:
        return max(1, int(configured))
    return max(1, available_cores() // max(1, processes))


def use_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
