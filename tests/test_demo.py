"""``intentgate demo --no-serve``, run as a user runs it, end to end.

The figures are derived from the scenarios in ``agents_examples/`` (see each agent's
docstring): every allowed, denied and held tool call, per reason code, and every token.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from intentgate.config import load_config
from intentgate.demo import read_summary
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

# support agent: read, lookup, refund, comment
SUPPORT = Counter(allow=4)
# hijacked agent: read, 2 emails (denied), early refund (denied), lookup, refund of ORD-5003 (denied),
# refund, the refund again (denied), comment
HIJACKED = Counter(allow=4, deny=5)
# LLM-style agent: the call without task context (denied), read, 3 pages of orders, comment
LLM = Counter(allow=5, deny=1)
# reviewer scenario: read, lookup, refund (held), the approved retry, comment; then break-glass: read,
# refund without the lookup (denied), the same under the grant, comment
REVIEW = Counter(allow=4, hold=1) + Counter(allow=3, deny=1)

REASONS = Counter({
    "unknown_step": 1,  # hijacked: email under a made-up step
    "tool_mismatch": 1, "argument_not_allowed": 1, "argument_missing": 1,  # hijacked: email as `lookup`
    "step_out_of_order": 3,  # hijacked: refund before lookup, the refund again; break-glass: before the grant
    "binding_unresolved": 2,  # hijacked: refund before lookup; break-glass: before the grant
    "binding_mismatch": 1,  # hijacked: refund of ORD-5003
    "missing_task_context": 1,  # LLM-style: first call
    "policy_hold": 1, "policy:large_refund": 1,  # reviewer: 1800 EUR
    "approved (allowed)": 1, "break_glass (allowed)": 1,  # the retry after approval; the refund under the grant
})


def intentgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "intentgate", *args], check=False, cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "COLUMNS": "200"})


def test_demo_runs_end_to_end_and_its_audit_chain_verifies(tmp_path: Path) -> None:
    out = intentgate("demo", "--no-serve", "--data-dir", str(tmp_path))
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    expected = SUPPORT + HIJACKED + LLM + REVIEW
    allowed = expected["allow"]

    summary = read_summary(load_config(tmp_path / "intentgate.yaml"))
    assert summary.by_outcome == dict(expected)
    assert summary.calls == sum(expected.values())
    assert summary.by_reason == dict(sorted(REASONS.items()))
    # one single-use token per allowed call, each burnt by the gateway as it forwarded the call
    assert summary.tokens == {"minted": allowed, "consumed": allowed, "revoked": 0, "unused": 0}
    assert summary.tasks == {"completed": 4, "ended": 1}  # the LLM-style agent stopped before `notify`
    # every task was begun by the support queue; the hijacked agent's three attempts to re-plan were refused
    assert summary.begins == {"tasks begun by support-queue": 5, "task begins refused: task_issuer_required": 3}
    assert summary.chain_ok and summary.chain_checked > summary.calls

    # what was printed: the agents' steps, then the same figures
    text = out.stdout
    for heading in ("1. The support queue assigns TCK-1001", "2. The same agent on TCK-1002", "3. An LLM-style agent",
                    "4. A large refund"):
        assert heading in text
    assert "[support queue] began refund-order for spiffe://example.org/agent/support-1 on TCK-1001" in text
    assert re.search(r"task begins refused: task_issuer_required\s*│\s*3\s*│", text)
    assert "email the customer list out" in text and "unknown_step:send_customer_list" in text
    assert re.search(rf"tool calls decided\s*│\s*{summary.calls}\s*│", text)
    assert re.search(rf"denied\s*│\s*{expected['deny']}\s*│", text)
    assert re.search(rf"action tokens consumed\s*│\s*{allowed}\s*│", text)
    assert re.search(r"binding_mismatch\s*│\s*1\s*│", text)
    assert f"audit log: {summary.chain_checked} decisions, Merkle tree and checkpoints verified" in text
    assert "approved:apr_" in text and "break_glass:grt_" in text
    assert "starting the gateway" in text or "gateway at http://127.0.0.1:" in text

    # the audit log the demo left behind verifies from the CLI too
    verify = intentgate("audit", "verify", "--config", str(tmp_path / "intentgate.yaml"))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "audit log OK" in verify.stdout


def test_demo_refuses_to_run_outside_a_checkout(tmp_path: Path) -> None:
    from intentgate.demo import write_config
    from intentgate.errors import ConfigError

    with pytest.raises(ConfigError, match="source checkout"):
        write_config(tmp_path / "data", root=tmp_path)


def test_demo_on_a_chosen_port_stops_everything_on_sigterm(tmp_path: Path) -> None:
    """`demo --port P` serves on P; SIGTERM stops the demo and, with it, the gateway and its tool
    servers (which run in a process session of their own)."""
    import signal
    import time

    import httpx2

    from tests.processes import free_port, startup_budget

    port = free_port()
    out = (tmp_path / "demo.out").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "intentgate", "demo", "--data-dir", str(tmp_path / "d"),
                             "--port", str(port)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    try:
        deadline = time.monotonic() + startup_budget(240)
        while "serving until Ctrl-C" not in (tmp_path / "demo.out").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "demo.out").read_text()[-3000:]
            time.sleep(0.5)
        assert httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) is not None
    finally:
        if proc.poll() is None:
            proc.kill()
        out.close()
    assert "stopping the gateway and its tool servers" in (tmp_path / "demo.out").read_text()
    with pytest.raises(httpx2.HTTPError):
        httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    left = subprocess.run(["pgrep", "-f", str(tmp_path / "d")], capture_output=True, text=True).stdout.split()
    assert left == [], "processes of the demo are still running"
