"""The gateway's log is one JSON object per line, whatever an attacker puts in the fields it
logs: `intentgate serve` as a subprocess, hostile strings in a token header, a Host header and
a session id, then every line of its stderr parsed."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest

from tests.conftest import ROOT
from tests.processes import free_port, serve, stop
from tests.test_front_http import agent_token
from tests.test_front_stdio import make_gateway

pytestmark = pytest.mark.slow

FORGED = 'evil"}\n{"level":"CRITICAL","logger":"intentgate.audit","msg":"audit chain rewritten"}'
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
HELLO = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
ACCEPT = "application/json, text/event-stream"


def b64(doc: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()


def test_every_line_is_json_and_hostile_fields_stay_inside_their_strings(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    make_gateway(tmp_path)
    monkeypatch.setenv("INTENTGATE_LOG_LEVEL", "info")
    proc = serve(tmp_path / "intentgate.yaml", port := free_port(), tmp_path / "gateway.log")
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        token = f"{b64({'alg': 'EdDSA', 'kid': FORGED, 'typ': 'JWT'})}.{b64({'iss': 'intentgate-dev'})}.c2ln"
        assert httpx2.post(url, json=HELLO, headers={"Authorization": f"Bearer {token}", "Accept": ACCEPT},
                           timeout=30).status_code == 401
        assert httpx2.post(url, json=HELLO, headers={"Host": FORGED.replace("\n", " "), "Accept": ACCEPT},
                           timeout=30).status_code == 421
        # another agent's session: refused and recorded, the decision id logged as a field of its own
        mine = agent_token(tmp_path)
        opened = httpx2.post(url, json=HELLO, headers={"Authorization": f"Bearer {mine}", "Accept": ACCEPT},
                             timeout=30)
        theirs = agent_token(tmp_path, "spiffe://example.org/agent/support-2")
        assert httpx2.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, timeout=30, headers={
            "Authorization": f"Bearer {theirs}", "Accept": ACCEPT, "Mcp-Protocol-Version": "2025-06-18",
            "Mcp-Session-Id": opened.headers["mcp-session-id"]}).status_code == 404
    finally:
        stop(proc)
    lines = (tmp_path / "gateway.log").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line parses
    assert records and all(isinstance(r, dict) for r in records)
    assert all(RFC3339_UTC.match(r["time"]) and r["level"] and r["logger"] and "msg" in r for r in records)
    assert not any(r["level"] == "CRITICAL" or r.get("msg") == "audit chain rewritten" for r in records)
    # the hostile kid and Host are logged, escaped, inside the gateway's own messages
    assert sum("audit chain rewritten" in r["msg"] and r["logger"] == "intentgate.web" for r in records) == 2
    refusal = [r for r in records if "session_not_owned" in r["msg"]]
    assert refusal and refusal[0]["decision_id"].startswith("dec_")
    assert any(r["logger"].startswith("uvicorn") for r in records)  # uvicorn's lines too


def test_serve_says_where_everything_is_once_ready_whatever_the_level(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    make_gateway(tmp_path)
    monkeypatch.setenv("INTENTGATE_LOG_LEVEL", "error")
    proc = serve(tmp_path / "intentgate.yaml", port := free_port(), tmp_path / "gateway.log")
    stop(proc)
    records = [json.loads(line) for line in (tmp_path / "gateway.log").read_text().splitlines()]
    (ready,) = [r for r in records if r["logger"] == "intentgate.serve"]
    base = f"http://127.0.0.1:{port}"
    assert ready["url"] == base and f"MCP at {base}/mcp" in ready["msg"] and f"{base}/ui" in ready["msg"]
    assert ready["upstreams_up"] == ready["upstreams"] == 4 and ready["intents"] == 4
    assert not [r for r in records if r["level"] == "INFO" and r["logger"] != "intentgate.serve"]


def test_a_hostile_trace_context_is_not_quoted_into_the_log() -> None:
    """The W3C parsers' warnings quote the agent's value; the gateway's logging keeps them out."""
    script = """
import logging
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from intentgate.logs import configure_logging
configure_logging("DEBUG")
carrier = {"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01",
           "tracestate": 'evil"}\\n{"level":"CRITICAL"=x,' + "k" * 300 + "=v"}
TraceContextTextMapPropagator().extract(carrier)
logging.getLogger("test").warning("still logging")
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stderr.splitlines()]
    assert [line["msg"] for line in lines] == ["still logging"]
