"""Real OPA servers for the tests: the binary `.ci/run` builds from OPA's Go module.

The binary is ``$INTENTGATE_OPA_BIN`` or ``opa`` on the PATH.  Where there is none the OPA
tests skip, saying why, unless ``INTENTGATE_REQUIRE_OPA`` is set (CI sets it once it has
built OPA): then a missing or unreachable OPA fails them.  A test that needs to stop, kill,
restart or configure its own server starts an :class:`OpaProcess`; the rest share one
server (``$INTENTGATE_OPA_URL``, the one `.ci/run` starts, or else one started here).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
import pytest

from tests.processes import free_port, startup_budget

__all__ = ["OpaProcess", "need_opa_binary", "opa_binary", "opa_or_skip", "reachable"]


def opa_binary() -> str | None:
    return os.environ.get("INTENTGATE_OPA_BIN") or shutil.which("opa")


def opa_or_skip(why: str) -> None:
    """Skip, or fail where CI requires OPA."""
    if os.environ.get("INTENTGATE_REQUIRE_OPA"):
        pytest.fail(f"{why}, but INTENTGATE_REQUIRE_OPA is set")
    pytest.skip(why)


def need_opa_binary() -> str:
    binary = opa_binary()
    if not binary:
        opa_or_skip("no OPA binary ($INTENTGATE_OPA_BIN or opa on the PATH; bash .ci/opa.sh builds one)")
    assert binary is not None
    return binary


def reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port or 80), timeout=2).close()
    except OSError:
        return False
    return True


class OpaProcess:
    """``opa run --server`` on a loopback port of its own, which survives restarts.

    ``config`` is OPA's configuration file (services, bundles, decision_logs), ``files`` are
    loaded at start (policy and data, as ``opa run`` loads them).  stdout and stderr go to
    ``log`` (decision logs on the console land there as JSON lines).
    """

    def __init__(self, workdir: Path, *, config: dict[str, Any] | None = None,
                 files: list[Path] | None = None, extra_args: list[str] | None = None) -> None:
        self.binary = need_opa_binary()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = workdir / "opa.log"
        self.config = config
        self.files = files or []
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, wait_ready: bool = True) -> OpaProcess:
        args = [self.binary, "run", "--server", "--addr", f"127.0.0.1:{self.port}", "--log-level", "info",
                "--log-format", "json", "--disable-telemetry"]
        if self.config is not None:
            path = self.workdir / "opa-config.json"
            path.write_text(json.dumps(self.config))
            args += ["--config-file", str(path)]
        args += self.extra_args + [str(f) for f in self.files]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir)
        if wait_ready:
            self.wait_healthy()
        return self

    def wait_healthy(self, *, bundles: bool = False, timeout: float | None = None) -> None:
        """Until ``/health`` (with ``?bundles`` once every configured bundle is active) is 200."""
        deadline = time.monotonic() + (timeout or startup_budget())
        path = "/health?bundles" if bundles else "/health"
        while True:
            try:
                if httpx2.get(self.url + path, timeout=2).status_code == 200:
                    return
            except httpx2.HTTPError:
                pass
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"OPA exited with {self.proc.returncode}: {self.log_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"OPA on {self.url} not healthy ({path}): {self.log_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text().splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict):
                out.append(doc)
        return out
