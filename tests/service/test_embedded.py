"""Embedded mode's worker processes: a worker that dies is replaced; stop ends them all."""

from __future__ import annotations

import os
import signal
import time

import pytest

from gradstore.db.settings import Settings
from gradstore.migrations import upgrade
from gradstore.service.embedded import WorkerProcesses

pytestmark = pytest.mark.slow


def test_a_killed_worker_is_replaced_and_stop_ends_every_worker(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADSTORE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("GRADSTORE_DATABASE_URL", raising=False)
    upgrade(Settings().database_url)
    workers = WorkerProcesses(2, check_seconds=0.1).start()
    try:
        first = workers.children[0]
        os.kill(first.pid, signal.SIGKILL)  # like the kernel's out-of-memory killer
        deadline = time.monotonic() + 20
        while workers.restarts == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert workers.restarts == 1 and workers.children[0].pid != first.pid
        assert all(child.poll() is None for child in workers.children)
    finally:
        workers.stop(grace_seconds=20)
    assert all(child.poll() is not None for child in workers.children)
    assert workers.restarts == 1  # stopping is not dying: nothing restarted
