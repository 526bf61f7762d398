"""Gateway processes for system tests: a free port, `intentgate serve` started and healthy, stopped."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2

from tests.conftest import ROOT

__all__ = ["free_port", "serve", "startup_budget", "stop"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def startup_budget(base: float = 30.0) -> float:
    """Seconds a process may take to start: ``base`` times ``$INTENTGATE_SLOW`` (default 1),
    plus half the base per runnable process beyond the cores (a loaded machine starts slowly).
    A budget only: the tests wait for readiness, never for the budget."""
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    return base * float(os.environ.get("INTENTGATE_SLOW", "1")) * (1 + max(0.0, load - 1) / 2)


def serve(config: Path, port: int, log: Path, timeout: float | None = None) -> subprocess.Popen[bytes]:
    """``intentgate serve --config config --port port`` on 127.0.0.1, its stderr appended to
    ``log``; returns once ``/healthz`` answers 200 (within ``timeout``, default the start-up
    budget), or raises with the log's tail."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "intentgate", "serve", "--config", str(config), "--port", str(port)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=out,
        )
    deadline = time.monotonic() + (timeout or startup_budget(60))
    while True:
        try:
            if httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx2.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"gateway on port {port} did not start: {log.read_text()[-2000:]}")
        time.sleep(0.2)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
