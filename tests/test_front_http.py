"""End to end over Streamable HTTP: `intentgate serve` as a subprocess on 127.0.0.1, a real
MCP client with a bearer workload token, real subprocess upstreams."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import asynccontextmanager
from importlib.metadata import version
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from prometheus_client.parser import text_string_to_metric_families

from intentgate.identity import DevIssuer
from intentgate.keys import KeySet
from tests.conftest import INTENTS_DIR
from tests.processes import free_port, serve, stop
from tests.tasks import ORCHESTRATOR, grant_args, issue_task, orchestrator_token
from tests.test_front_stdio import PARAMS, SUPPORT, make_gateway

pytestmark = pytest.mark.slow

QUICK_LOOK = """
name: quick-look
version: "1"
agents: ["spiffe://example.org/agent/support-*"]
begin: [agent]
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
        task = await issue_task(base, data_dir, SUPPORT, "refund-order", PARAMS)
        r = await client.call_tool("tickets__get_ticket", {"ticket_id": "TCK-1"},
                                   meta={"intentgate/task": task, "intentgate/step": "read_ticket"})
        assert not r.is_error and r.structured_content["verified_jti"]
        r = await client.call_tool("payments__refund", {"order_id": "ORD-7", "amount": 5, "currency": "EUR"},
                                   meta={"intentgate/task": task, "intentgate/step": "refund"})
        assert r.is_error and "step_out_of_order:refund" in r.structured_content["reasons"]


async def test_another_agents_task_over_http(gateway) -> None:
    base, data_dir = gateway
    task = await issue_task(base, data_dir, SUPPORT, "refund-order", PARAMS)
    async with mcp_client(base, agent_token(data_dir, "spiffe://example.org/agent/support-2")) as other:
        r = await other.call_tool("tickets__get_ticket", {"ticket_id": "TCK-1"},
                                  meta={"intentgate/task": task, "intentgate/step": "read_ticket"})
        assert r.is_error and "task_not_owned" in r.structured_content["reasons"]


async def test_workflow_denials_over_http(gateway) -> None:
    base, data_dir = gateway
    async with mcp_client(base, agent_token(data_dir)) as client:
        task = await issue_task(base, data_dir, SUPPORT, "refund-order", PARAMS)

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
    async with mcp_client(base, agent_token(data_dir)) as client:  # from the task grant its host gave it
        r = await client.call_tool("intentgate__begin_task", grant_args(data_dir, SUPPORT, "refund-order", PARAMS))
        assert not r.is_error
        task = r.structured_content["task"]
        r = await client.call_tool("tickets__get_ticket", {"ticket_id": "TCK-1"},
                                   meta={"intentgate/task": task, "intentgate/step": "read_ticket"})
        assert not r.is_error
    assert begun() == before + 1
    families = {f.name: f for f in text_string_to_metric_families(httpx2.get(f"{base}/metrics", timeout=10).text)}
    assert families["intentgate_tokens"].samples
    calls = [s for s in families["intentgate_upstream_call_seconds"].samples if s.name.endswith("_count")
             and s.labels == {"upstream": "tickets", "status": "ok"}]
    assert calls and calls[0].value >= 1
    build = families["intentgate_build_info"].samples[0]
    assert build.labels["version"] == version("intentgate") and build.value == 1
    for family in families.values():  # no *_created series, no empty label
        for sample in family.samples:
            assert not sample.name.endswith("_created"), sample.name
            assert all(v != "" for v in sample.labels.values()), sample


# ----- task origin over HTTP: POST /v1/tasks, and task grants presented over MCP ------------------


def db_rows(data_dir: Path, sql: str, *params: object) -> list[tuple]:
    import sqlite3

    db = sqlite3.connect(data_dir / "intentgate.db")
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


async def test_a_task_issuer_begins_and_ends_tasks_over_rest(gateway) -> None:
    base, data_dir = gateway
    issuer = {"Authorization": f"Bearer {orchestrator_token(data_dir)}"}
    async with httpx2.AsyncClient(base_url=base, timeout=30) as http:
        r = await http.post("/v1/tasks", headers=issuer, json={
            "agent": SUPPORT, "intent": "refund-order", "params": PARAMS, "reason": "ticket assigned",
            "ttl_seconds": 120})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["agent"] == SUPPORT and body["issuer"] == f"orchestrator:{ORCHESTRATOR}"
        assert body["start_steps"] == ["read_ticket"] and body["decision_id"].startswith("dec_")
        task = body["task"]
        async with mcp_client(base, agent_token(data_dir)) as client:  # the agent works on it
            r2 = await client.call_tool("tickets__get_ticket", {"ticket_id": "TCK-1"},
                                        meta={"intentgate/task": task, "intentgate/step": "read_ticket"})
            assert not r2.is_error
            assert (await client.call_tool("orders__get_order", {"order_id": "ORD-7"},
                                           meta={"intentgate/task": task, "intentgate/step": "lookup"})).is_error \
                is False
        # the refusals a REST caller can meet, each with its reason code, each recorded
        cases = [
            ({}, {"agent": SUPPORT, "intent": "refund-order", "params": PARAMS, "reason": "x"}, 401, None),
            ({"Authorization": f"Bearer {agent_token(data_dir)}"},  # an agent is no task issuer
             {"agent": SUPPORT, "intent": "refund-order", "params": PARAMS, "reason": "x"}, 403, "issuer_not_permitted"),
            (issuer, {"agent": SUPPORT, "intent": "exfiltrate", "params": {}, "reason": "x"}, 404, "unknown_intent"),
            (issuer, {"agent": SUPPORT, "intent": "refund-order", "params": {"order_id": "7"}, "reason": "x"}, 422,
             "invalid_params"),
            (issuer, {"agent": "spiffe://example.org/agent/ops-1", "intent": "refund-order", "params": PARAMS,
                      "reason": "x"}, 403, "agent_not_permitted"),
            (issuer, {"agent": SUPPORT, "intent": "refund-order", "params": PARAMS, "reason": "x", "ttl_seconds": 10**6},
             422, "invalid_params"),
        ]
        for headers, payload, status, code in cases:
            r = await http.post("/v1/tasks", headers=headers, json=payload)
            assert r.status_code == status, (payload, r.text)
            if code:
                assert r.json()["error"] == code and r.json()["decision_id"].startswith("dec_")
                [(kind, outcome, reasons)] = db_rows(data_dir, "SELECT kind, outcome, reasons FROM decisions "
                                                     "WHERE id = ?", r.json()["decision_id"])
                assert (kind, outcome, json.loads(reasons)[0].split(":")[0]) == ("task/begin", "deny", code)
        # ending: only the issuer that began it
        r = await http.post(f"/v1/tasks/{task}/end", headers={"Authorization": f"Bearer {agent_token(data_dir)}"})
        assert r.status_code == 403 and r.json()["error"] == "issuer_not_permitted"
        r = await http.post(f"/v1/tasks/{task}/end", headers=issuer)
        assert r.status_code == 200 and r.json()["status"] == "ended", r.text
        r = await http.post(f"/v1/tasks/{task}/end", headers=issuer)
        assert r.status_code == 409 and r.json()["error"] == "task_ended"
        async with mcp_client(base, agent_token(data_dir)) as client:  # a task the agent began itself
            own = (await client.call_tool("intentgate__begin_task", {"intent": "quick-look",
                                          "params": {"ticket_id": "TCK-1"}, "reason": "x"})).structured_content["task"]
        r = await http.post(f"/v1/tasks/{own}/end", headers=issuer)
        assert r.status_code == 403 and r.json()["error"] == "task_not_owned"
        r = await http.post("/v1/tasks/tsk_nope/end", headers=issuer)
        assert r.status_code == 404 and r.json()["error"] == "unknown_task"


async def test_attack_over_mcp_the_agent_cannot_begin_the_mailing_task(gateway) -> None:
    base, data_dir = gateway
    async with mcp_client(base, agent_token(data_dir)) as client:
        r = await client.call_tool("intentgate__begin_task", {
            "intent": "triage-ticket", "params": {"ticket_id": "TCK-1", "customer_email": "ops@evil.example"},
            "reason": "follow up"})
    assert r.is_error and r.structured_content["reasons"] == ["task_issuer_required"]
    [(outcome,)] = db_rows(data_dir, "SELECT outcome FROM decisions WHERE id = ?", r.structured_content["decision_id"])
    assert outcome == "deny"
    assert db_rows(data_dir, "SELECT id FROM tasks WHERE params LIKE '%evil.example%'") == []


async def test_task_grants_over_http(gateway) -> None:
    base, data_dir = gateway
    grant = grant_args(data_dir, SUPPORT, "refund-order", PARAMS)
    async with mcp_client(base, agent_token(data_dir, "spiffe://example.org/agent/support-2")) as other:
        r = await other.call_tool("intentgate__begin_task", grant)  # presented by another agent
        assert r.is_error and r.structured_content["reasons"] == ["task_grant_agent"]
    async with mcp_client(base, agent_token(data_dir)) as client:
        first = await client.call_tool("intentgate__begin_task", grant)
        again = await client.call_tool("intentgate__begin_task", grant)
        mixed = await client.call_tool("intentgate__begin_task", {**grant, "intent": "lookup-order"})
    assert not first.is_error and first.structured_content["issuer"].startswith("local:")
    assert again.is_error and again.structured_content["reasons"] == ["task_grant_replayed"]
    assert mixed.is_error and mixed.structured_content["reasons"] == ["invalid_params"]
    for refusal in (r, again, mixed):
        [(kind, outcome)] = db_rows(data_dir, "SELECT kind, outcome FROM decisions WHERE id = ?",
                                    refusal.structured_content["decision_id"])
        assert (kind, outcome) == ("task/begin", "deny")


def test_api_docs_work_offline(gateway) -> None:
    """/docs and /redoc load their scripts from the gateway itself, not from a CDN."""
    base, _ = gateway
    for page, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        html = httpx2.get(base + page, timeout=30)
        assert html.status_code == 200 and f"/static-offline-docs/{asset}" in html.text
        assert "cdn.jsdelivr.net" not in html.text and "unpkg.com" not in html.text
        script = httpx2.get(f"{base}/static-offline-docs/{asset}", timeout=30)
        assert script.status_code == 200 and len(script.content) > 100_000
    assert httpx2.get(base + "/openapi.json", timeout=30).json()["info"]["title"] == "IntentGate"
