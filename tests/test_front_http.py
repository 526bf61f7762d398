"""End to end over Streamable HTTP: `intentgate serve` as a subprocess on 127.0.0.1, a real
MCP client with a bearer workload token, real subprocess upstreams."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from gateway.identity import DevIssuer
from gateway.keys import KeySet
from tests.conftest import INTENTS_DIR
from tests.processes import free_port, serve, stop
from tests.test_front_stdio import PARAMS, SUPPORT, make_gateway

pytestmark = pytest.mark.slow

QUICK_LOOK = """
name: quick-look
version: "1"
agents: ["spiffe://example.org/agent/support-*"]
params: {ticket_id: {type: string}}
ttl_seconds: 1
start: [read]
steps:
  read:
    tool: tickets.get_ticket
    arguments: {ticket_id: {bind: params.ticket_id}}
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """One gateway (and its four upstream servers) for the whole module: starting them is slow."""
    tmp_path = tmp_path_factory.mktemp("http-gateway")
    intents = tmp_path / "intents"
    shutil.copytree(INTENTS_DIR, intents)
    (intents / "quick-look.yaml").write_text(QUICK_LOOK)
    make_gateway(tmp_path, intents_dir=intents)  # writes intentgate.yaml, keys and the upstreams' JWKS
    proc = serve(tmp_path / "intentgate.yaml", port := free_port(), tmp_path / "gateway.log")
    try:
        yield f"http://127.0.0.1:{port}", tmp_path
    finally:
        stop(proc)


def agent_token(data_dir: Path, agent: str = SUPPORT) -> str:
    return DevIssuer(KeySet.open_or_create(data_dir / "keys" / "agent-issuer")).mint(agent)


@asynccontextmanager
async def mcp_client(base: str, token: str | None, mode: str = "auto"):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        async with Client(streamable_http_client(f"{base}/mcp", http_client=http), mode=mode) as client:
            yield client


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_workflow_over_http(gateway, mode: str) -> None:
    base, data_dir = gateway
    async with mcp_client(base, agent_token(data_dir), mode) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"tickets__get_ticket", "payments__refund", "intentgate__begin_task"} <= names
        r = await client.call_tool("intentgate__begin_task", {"intent": "refund-order", "params": PARAMS,
                                                              "reason": "customer asked"})
        task = r.structured_content["task"]
        r = await client.call_tool("tickets__get_ticket", {"ticket_id": "TCK-1"},
                                   meta={"intentgate/task": task, "intentgate/step": "read_ticket"})
        assert not r.is_error and r.structured_content["verified_jti"]
        r = await client.call_tool("payments__refund", {"order_id": "ORD-7", "amount": 5, "currency": "EUR"},
                                   meta={"intentgate/task": task, "intentgate/step": "refund"})
        assert r.is_error and "step_out_of_order:refund" in r.structured_content["reasons"]


async def test_another_agents_task_over_http(gateway) -> None:
    base, data_dir = gateway
    async with mcp_client(base, agent_token(data_dir)) as owner:
        r = await owner.call_tool("intentgate__begin_task", {"intent": "refund-order", "params": PARAMS,
                                                             "reason": "x"})
        task = r.structured_content["task"]
    async with mcp_client(base, agent_token(data_dir, "spiffe://example.org/agent/support-2")) as other:
        r = await other.call_tool("tickets__get_ticket", {"ticket_id": "TCK-1"},
                                  meta={"intentgate/task": task, "intentgate/step": "read_ticket"})
        assert r.is_error and "task_not_owned" in r.structured_content["reasons"]


async def test_workflow_denials_over_http(gateway) -> None:
    base, data_dir = gateway
    async with mcp_client(base, agent_token(data_dir)) as client:
        r = await client.call_tool("intentgate__begin_task", {"intent": "refund-order", "params": PARAMS,
                                                              "reason": "customer asked"})
        task = r.structured_content["task"]

        async def call(tool: str, args: dict, step: str) -> list[str] | None:
            # the LLM-style form: task and step as arguments
            r = await client.call_tool(tool, {**args, "intent_task": task, "intent_step": step})
            return r.structured_content["reasons"] if r.is_error else None

        assert await call("orders__get_order", {"order_id": "ORD-7"}, "lookup") == ["step_out_of_order:lookup"]
        assert await call("orders__get_order", {"order_id": "ORD-7"}, "read_ticket") == [
            "tool_mismatch:orders.get_order", "argument_not_allowed:order_id", "argument_missing:ticket_id"]
        assert await call("tickets__get_ticket", {"ticket_id": "TCK-1"}, "read_ticket") is None
        assert await call("orders__get_order", {"order_id": "ORD-8"}, "lookup") == ["binding_mismatch:order_id"]
        assert await call("orders__get_order", {"order_id": "ORD-7"}, "lookup") is None
        assert await call("payments__refund", {"order_id": "ORD-7", "amount": "lots", "currency": "EUR"},
                          "refund") == ["argument_constraint:amount"]

        r = await client.call_tool("intentgate__begin_task", {"intent": "quick-look", "params": {"ticket_id": "TCK-1"},
                                                              "reason": "short-lived"})
        quick = r.structured_content["task"]
        await asyncio.sleep(1.2)  # the intent's ttl is one second
        r = await client.call_tool("tickets__get_ticket", {"ticket_id": "TCK-1"},
                                   meta={"intentgate/task": quick, "intentgate/step": "read"})
        assert r.is_error and r.structured_content["reasons"] == ["task_expired"]


@pytest.mark.parametrize("token", [None, "not-a-jwt"])
def test_no_or_bad_identity_gets_401(gateway, token) -> None:
    base, _ = gateway
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    r = httpx2.post(f"{base}/mcp", json=body, headers=headers, timeout=10)
    assert r.status_code == 401 and r.json()["error"] == "unauthenticated"
    assert r.headers["www-authenticate"] == "Bearer"


def test_forged_identity_gets_401(gateway, tmp_path_factory) -> None:
    base, _ = gateway
    forged = DevIssuer(KeySet.open_or_create(tmp_path_factory.mktemp("forger"))).mint(SUPPORT)
    r = httpx2.post(f"{base}/v1/decide", json={"task": "t", "step": "s", "upstream": "u", "tool": "x"},
                    headers={"Authorization": f"Bearer {forged}"}, timeout=10)
    assert r.status_code == 401


def test_malformed_json_rpc_is_refused_and_gateway_survives(gateway) -> None:
    base, data_dir = gateway
    headers = {"Authorization": f"Bearer {agent_token(data_dir)}", "Content-Type": "application/json",
               "Accept": "application/json, text/event-stream"}
    for payload in (b"{not json", b"[]", b'{"jsonrpc": "1.0"}', json.dumps({"jsonrpc": "2.0", "id": 1}).encode()):
        r = httpx2.post(f"{base}/mcp", content=payload, headers=headers, timeout=10)
        assert 400 <= r.status_code < 500, (payload, r.status_code, r.text)
    assert httpx2.get(f"{base}/healthz", timeout=5).status_code == 200


def test_oversized_request_is_refused(gateway) -> None:
    base, data_dir = gateway
    headers = {"Authorization": f"Bearer {agent_token(data_dir)}", "Content-Type": "application/json",
               "Accept": "application/json, text/event-stream"}
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": "tickets__get_ticket", "arguments": {"ticket_id": "x" * 2_000_000}}})
    r = httpx2.post(f"{base}/mcp", content=body.encode(), headers=headers, timeout=10)
    assert r.status_code == 413
    assert httpx2.get(f"{base}/healthz", timeout=5).status_code == 200


def test_rest_decide_and_jwks(gateway) -> None:
    base, data_dir = gateway
    auth = {"Authorization": f"Bearer {agent_token(data_dir)}"}
    jwks = httpx2.get(f"{base}/.well-known/jwks.json", timeout=5).json()
    assert jwks["keys"] and all("d" not in k for k in jwks["keys"])
    r = httpx2.post(f"{base}/v1/decide", json={"task": "tsk_nope", "step": "lookup", "upstream": "orders",
                                               "tool": "get_order", "arguments": {"order_id": "ORD-7"}},
                    headers=auth, timeout=10)
    assert r.status_code == 200 and r.json()["outcome"] == "deny" and r.json()["reasons"] == ["unknown_task"]
    assert r.json()["token"] is None
    bad = httpx2.post(f"{base}/v1/decide", json={"task": "t", "extra": 1}, headers=auth, timeout=10)
    assert bad.status_code == 422
    assert os.path.exists(data_dir / "intentgate.db")


async def test_metrics_endpoint_counts_calls(gateway) -> None:
    base, data_dir = gateway

    def begun() -> float:
        text = httpx2.get(f"{base}/metrics", timeout=10).text
        line = [ln for ln in text.splitlines() if ln.startswith("intentgate_decisions_total{")
                and 'kind="task/begin"' in ln and 'outcome="allow"' in ln and 'intent="refund-order"' in ln]
        return float(line[0].rsplit(" ", 1)[1]) if line else 0.0

    before = begun()
    async with mcp_client(base, agent_token(data_dir)) as client:
        r = await client.call_tool("intentgate__begin_task", {"intent": "refund-order", "params": PARAMS,
                                                              "reason": "metrics"})
        assert not r.is_error
    assert begun() == before + 1
    assert 'intentgate_tokens_total{event="minted"}' in httpx2.get(f"{base}/metrics", timeout=10).text
