"""The official MCP conformance suite (`@modelcontextprotocol/conformance`, every server
scenario) against the reference server (tests/servers/conformance_server.py) directly, then
through `intentgate serve` fronting it.  The suite knows nothing of tasks or namespaced names,
so it reaches the gateway through tests/clients/conformance_proxy.py (bearer token, task and
step in `_meta`, names mapped back); every request still passes the gateway's HTTP front,
identity check and decisions.  Prints both scores side by side; they must be equal."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest
import yaml

from tests.conftest import POLICY_DIR, ROOT
from tests.processes import free_port, serve, startup_budget, stop
from tests.test_front_http import agent_token, mcp_client
from tests.test_front_stdio import make_gateway

pytestmark = pytest.mark.slow

SUITE = ROOT / "node_modules" / ".bin" / "conformance"
REFERENCE = ROOT / "tests" / "servers" / "conformance_server.py"
PROXY = ROOT / "tests" / "clients" / "conformance_proxy.py"

TOOLS = {  # the reference server's tools, and the arguments the suite passes them
    "test_simple_text": {}, "test_image_content": {}, "test_audio_content": {}, "test_embedded_resource": {},
    "test_multiple_content_types": {}, "test_tool_with_logging": {}, "test_tool_with_progress": {},
    "test_error_handling": {}, "test_sampling": {"prompt": {"type": "string", "optional": True}},
    "test_elicitation": {"message": {"type": "string", "optional": True}},
    "test_elicitation_sep1034_defaults": {}, "test_elicitation_sep1330_enums": {}, "test_reconnection": {},
    "json_schema_2020_12_tool": {"name": {"type": "string", "optional": True},
                                 "address": {"type": "object", "optional": True}},
}
ASKS = {"test_sampling": ["sampling"], "test_elicitation": ["elicitation"],
        "test_elicitation_sep1034_defaults": ["elicitation"], "test_elicitation_sep1330_enums": ["elicitation"]}


def intent() -> dict:
    """Every tool a free step: callable in any order, each up to 50 times.  (An intent needs a
    start step: `test_change_tools`, which the suite never calls.)"""
    steps = {name: {"tool": f"conf.{name}", "arguments": args, "max_calls": 50, "free": True,
                    **({"asks": ASKS[name]} if name in ASKS else {})}
             for name, args in TOOLS.items()}
    steps["change_tools"] = {"tool": "conf.test_change_tools"}
    return {"name": "conformance", "version": "1", "agents": ["spiffe://example.org/agent/support-*"],
            "begin": ["agent"], "ttl_seconds": 3600, "start": ["change_tools"], "steps": steps}


def wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + startup_budget(30)
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            httpx2.get(f"http://127.0.0.1:{port}/", timeout=1)
            return
        except httpx2.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {port}")


def run_suite(url: str, log: Path) -> dict[str, tuple[int, int]]:
    """``conformance server --suite all``: {scenario: (checks passed, checks failed)}."""
    out = subprocess.run([str(SUITE), "server", "--url", url, "--suite", "all"], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    log.write_text(out.stdout + out.stderr)
    scores = {m[1]: (int(m[2]), int(m[3]))
              for m in re.finditer(r"^[✓✗] ([a-z0-9-]+): (\d+) passed, (\d+) failed", out.stdout, re.M)}
    assert scores, f"the suite printed no scores: {(out.stdout + out.stderr)[-2000:]}"
    return scores


@pytest.fixture(scope="module")
def suite() -> Path:
    if not SUITE.exists() or not shutil.which("node"):
        if os.environ.get("CI"):
            pytest.fail("@modelcontextprotocol/conformance not installed in CI (npm ci)")
        pytest.skip("@modelcontextprotocol/conformance not installed (npm ci, needs node)")
    return SUITE


def gateway_config(tmp_path: Path) -> Path:
    make_gateway(tmp_path)  # keys, the agent issuer and a config to start from
    intents = tmp_path / "intents"
    intents.mkdir()
    (intents / "conformance.yaml").write_text(yaml.safe_dump(intent(), sort_keys=False))
    policy = tmp_path / "opa"
    shutil.copytree(POLICY_DIR, policy)
    data = json.loads((policy / "intentgate" / "data.json").read_text())
    data["reads"] = {"resources": {"conf": ["test://**"]}, "prompts": {"conf": ["*"]}}
    (policy / "intentgate" / "data.json").write_text(json.dumps(data))
    cfg = tmp_path / "intentgate.yaml"
    doc = yaml.safe_load(cfg.read_text())
    doc.update(intents_dir=str(intents), policy_dir=str(policy), upstreams=[{
        # the initialize handshake: subscriptions and logging/setLevel are 2025-era features
        "name": "conf", "command": sys.executable, "args": [str(REFERENCE)], "protocol": "legacy"}])
    cfg.write_text(yaml.safe_dump(doc))
    return cfg


async def test_conformance_through_the_gateway_equals_the_reference_server(suite: Path, tmp_path: Path) -> None:
    procs: list[subprocess.Popen[bytes]] = []
    logs = [open(tmp_path / "reference.log", "wb"), open(tmp_path / "proxy.log", "wb")]  # noqa: SIM115
    try:
        port = free_port()
        procs.append(subprocess.Popen([sys.executable, str(REFERENCE), "--port", str(port)], cwd=ROOT,
                                      stdout=subprocess.DEVNULL, stderr=logs[0]))
        wait_port(port, procs[-1])
        direct = run_suite(f"http://localhost:{port}/mcp", tmp_path / "direct.txt")

        cfg = gateway_config(tmp_path)
        procs.append(serve(cfg, gport := free_port(), tmp_path / "gateway.log"))
        token = agent_token(tmp_path)
        async with mcp_client(f"http://127.0.0.1:{gport}", token) as client:
            r = await client.call_tool("intentgate__begin_task", {"intent": "conformance", "params": {},
                                                                  "reason": "conformance suite"})
            assert not r.is_error, r.content
            task = r.structured_content["task"]
        pport = free_port()
        procs.append(subprocess.Popen(
            [sys.executable, str(PROXY), "--gateway", f"http://127.0.0.1:{gport}", "--port", str(pport),
             "--token", token, "--task", task], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=logs[1]))
        wait_port(pport, procs[-1])
        through = run_suite(f"http://localhost:{pport}/mcp", tmp_path / "gateway.txt")
    finally:
        for proc in reversed(procs):
            stop(proc)
        for f in logs:
            f.close()

    def ok(scores: dict[str, tuple[int, int]]) -> set[str]:
        return {name for name, (_, failed) in scores.items() if failed == 0}

    print(f"\n{'scenario':34} {'direct':>10} {'gateway':>10}")
    for name in sorted(direct.keys() | through.keys()):
        d, g = direct.get(name, (0, 0)), through.get(name, (0, 0))
        print(f"{name:34} {d[0]:>4}/{d[0] + d[1]:<5} {g[0]:>4}/{g[0] + g[1]:<5}")
    print(f"{'scenarios passed':34} {len(ok(direct)):>4}/{len(direct):<5} {len(ok(through)):>4}/{len(through):<5}")
    assert ok(direct) == set(direct), "the reference server itself fails scenarios: fix it first"
    assert ok(through) == ok(direct), (tmp_path / "gateway.txt").read_text()[-3000:]
    # a refusal also has text content, which some scenarios would take for a result: every
    # decision the gateway recorded must have been an allow, and every call must have run
    db = sqlite3.connect(tmp_path / "intentgate.db")
    refused = db.execute("SELECT kind, tool, reasons FROM decisions WHERE outcome != 'allow'").fetchall()
    ran = dict(db.execute("SELECT d.tool, o.status FROM decisions d JOIN call_outcomes o ON o.decision_id = d.id"))
    kinds = {k for (k,) in db.execute("SELECT DISTINCT kind FROM decisions")}
    db.close()
    assert refused == []
    assert ran == {f"conf.{name}": "tool_error" if name == "test_error_handling" else "ok"
                   for name in TOOLS if name != "json_schema_2020_12_tool"}  # listed by the suite, not called
    assert {"resources/read", "resources/subscribe", "prompts/get", "completion/complete",
            "sampling/createMessage", "elicitation/create"} <= kinds
