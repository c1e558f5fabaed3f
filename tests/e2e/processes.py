"""Real processes for end-to-end tests: the CLI's serve/api/worker commands over real HTTP."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    """A ``gradstore`` subcommand in its own process group, logging to a file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path):
        self.log = log
        self._handle = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "gradstore.cli", *args],
            env=os.environ | env,
            stdout=self._handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def kill(self) -> None:
        """SIGKILL the whole group: no cleanup, no lease release, like a lost machine."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()
        self._handle.close()

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._handle.close()


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def wait_for_http(base_url: str, process: Process, timeout: float = 60) -> None:
    def up():
        if process.popen.poll() is not None:
            raise RuntimeError(f"process exited: {process.log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, timeout, 0.2, f"{base_url} to answer")


def wait_ready(client: httpx.Client, store_id: str, timeout: float = 180) -> dict:
    def ready():
        body = client.get(f"/v1/datastores/{store_id}").json()
        if body["status"] in ("failed", "cancelled"):
            raise AssertionError(f"build ended {body['status']}: {body['error']}")
        return body if body["status"] == "ready" else None

    return wait_until(ready, timeout, 0.2, f"datastore {store_id} to be ready")


def manifest_files(store_dir: Path) -> dict[str, str]:
    import json

    return json.loads((store_dir / "manifest.json").read_text())["files"]
