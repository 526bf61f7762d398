"""Gateway processes for system tests: a free port, `intentgate serve` started and healthy, stopped."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2

from tests.conftest import ROOT

__all__ = ["free_port", "serve", "stop"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(config: Path, port: int, log: Path, timeout: float = 60) -> subprocess.Popen[bytes]:
    """``intentgate serve --config config --port port`` on 127.0.0.1, its stderr appended to
    ``log``; returns once ``/healthz`` answers 200, or raises with the log's tail."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(port)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=out,
        )
    deadline = time.monotonic() + timeout
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
