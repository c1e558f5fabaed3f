"""The worker processes of embedded mode (``gradstore serve``), kept alive beside the API.

Real processes, not threads or BackgroundTasks: a build holds the GIL and the GPU for
minutes. A worker that dies (say, killed for memory in the middle of a shard) is started
again, so the build goes on; its lost unit is re-claimed when the lease runs out and, if
it keeps killing workers, fails the build after ``max_attempts``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading

log = logging.getLogger("gradstore.serve")


class WorkerProcesses:
    def __init__(self, count: int, check_seconds: float = 2.0):
        self.count, self.check_seconds = count, check_seconds
        self.children: list[subprocess.Popen] = []
        self.restarts = 0
        self._stopping = threading.Event()
        self._watch = threading.Thread(target=self._keep_alive, daemon=True)

    def _spawn(self) -> subprocess.Popen:
        # --parent-pid: the worker exits by itself if this process is killed without cleanup
        command = [sys.executable, "-m", "gradstore.worker"]
        return subprocess.Popen([*command, "--parent-pid", str(os.getpid())], env=os.environ.copy())

    def start(self) -> WorkerProcesses:
        self.children = [self._spawn() for _ in range(self.count)]
        self._watch.start()
        return self

    def _keep_alive(self) -> None:
        while not self._stopping.wait(self.check_seconds):
            for i, child in enumerate(self.children):
                if child.poll() is not None and not self._stopping.is_set():
                    code = child.returncode
                    log.warning("worker %s exited (%s); starting another", child.pid, code)
                    self.children[i] = self._spawn()
                    self.restarts += 1

    def stop(self, grace_seconds: float = 30) -> None:
        """SIGTERM (each finishes its current unit), then SIGKILL after the grace period."""
        self._stopping.set()
        if self._watch.is_alive():
            self._watch.join()
        for child in self.children:
            if child.poll() is None:
                child.terminate()
        for child in self.children:
            try:
                child.wait(timeout=grace_seconds)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
