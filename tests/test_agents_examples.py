"""Every example agent in ``agents_examples/``, run against a real gateway.

One ``intentgate serve`` subprocess (the demo's config: the five example tool servers as
stdio subprocesses, embedded Rego, SQLite, the support queue as task issuer) is shared by the
module; the support queue (``agents_examples.orchestrator``, over ``POST /v1/tasks``) begins
each agent's task, each test runs an agent with a workload token from the dev issuer and
checks its transcript against what actually happened: the gateway's decision log and the
tool servers' own databases.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents_examples import (
    _agent,
    hijacked_agent,
    llm_style_agent,
    reviewer_scenario,
    support_agent,
)
from agents_examples.orchestrator import ORCHESTRATOR, Orchestrator, TaskRefused
from intentgate.config import load_config
from intentgate.demo import AGENTS, DemoGateway, start_gateway, write_config
from intentgate.identity import DevIssuer
from intentgate.keys import KeySet
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoGateway]:
    config = write_config(tmp_path_factory.mktemp("agents"))
    with start_gateway(config) as gw:
        yield gw


@pytest.fixture(scope="module")
def queue(gateway: DemoGateway) -> Orchestrator:
    """The support queue, with its own workload identity: the task issuer of the support intents."""
    return Orchestrator(gateway.base_url, gateway.agent_token(ORCHESTRATOR))


def rows(db: Path, sql: str, *params: Any) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()


def server_db(gw: DemoGateway, name: str) -> Path:
    return gw.config.data_dir / "servers" / f"{name}.db"


def decisions(gw: DemoGateway, task: str) -> list[dict[str, Any]]:
    found = rows(gw.config.data_dir / "intentgate.db",
                 "SELECT step, tool, outcome, reasons, token_jti FROM decisions"
                 " WHERE task_id = ? AND kind = 'tools/call' ORDER BY seq", task)
    return [{**d, "reasons": json.loads(d["reasons"])} for d in found]


def task_status(gw: DemoGateway, task: str) -> str:
    return rows(gw.config.data_dir / "intentgate.db", "SELECT status FROM tasks WHERE id = ?", task)[0]["status"]


def verdicts(transcript: _agent.Transcript) -> list[tuple[str, str, list[str]]]:
    return [(c.label, c.outcome, c.reasons) for c in transcript.calls]


async def test_support_agent_follows_the_workflow(gateway: DemoGateway, queue: Orchestrator) -> None:
    lines: list[str] = []
    task = await queue.assign_refund(support_agent.AGENT, "TCK-1001")
    t = await support_agent.run(gateway.mcp_url, gateway.agent_token(support_agent.AGENT), task=task,
                                say=lines.append)
    assert verdicts(t) == [
        ("read the ticket", "allow", []), ("look up the order", "allow", []),
        ("refund 42.50 EUR", "allow", []), ("note the refund on the ticket", "allow", []),
    ]
    assert all(c.tool_error is None for c in t.calls)
    assert t.tasks == [task]
    assert task_status(gateway, task) == "completed"
    [issued] = rows(gateway.config.data_dir / "intentgate.db", "SELECT agent, issuer FROM tasks WHERE id = ?", task)
    assert issued == {"agent": support_agent.AGENT, "issuer": f"support-queue:{ORCHESTRATOR}"}
    assert [(d["step"], d["outcome"]) for d in decisions(gateway, task)] == [
        ("read_ticket", "allow"), ("lookup", "allow"), ("refund", "allow"), ("comment", "allow")]
    # the refund landed at the payment provider, authorised by the gateway's token for this task
    [refund] = rows(server_db(gateway, "payments"), "SELECT * FROM refunds WHERE task = ?", task)
    assert (refund["order_id"], refund["amount_cents"], refund["currency"]) == ("ORD-5001", 4250, "EUR")
    assert refund["agent"] == support_agent.AGENT and refund["token_id"] == decisions(gateway, task)[2]["token_jti"]
    comments = rows(server_db(gateway, "tickets"), "SELECT body FROM comments WHERE ticket_id = 'TCK-1001'")
    assert any(c["body"].startswith("Refunded 42.50 EUR of ORD-5001 (RF-") for c in comments)
    # each step was printed; the transcript says the task was complete before end_task
    assert sum("→ ALLOWED" in line for line in lines) == 4
    assert any("already complete" in n for n in t.notes)


async def test_hijacked_agent_is_refused_everything_the_injection_asks(gateway: DemoGateway,
                                                                       queue: Orchestrator) -> None:
    assigned = await queue.assign_refund(hijacked_agent.AGENT, "TCK-1002")
    t = await hijacked_agent.run(gateway.mcp_url, gateway.agent_token(hijacked_agent.AGENT), task=assigned, say=None)
    assert verdicts(t) == [
        ("read the ticket", "allow", []),
        ("re-plan: its own triage task, mailing the attacker", "deny", ["task_issuer_required"]),
        ("re-plan: its own refund task for ORD-5003 (first half of 1,800 EUR)", "deny", ["task_issuer_required"]),
        ("re-plan: its own refund task for ORD-5003 (second half of 1,800 EUR)", "deny", ["task_issuer_required"]),
        ("email the customer list out", "deny", ["unknown_step:send_customer_list"]),
        ("email it as the next step", "deny", [
            "tool_mismatch:email.send", "argument_not_allowed:to", "argument_not_allowed:subject",
            "argument_not_allowed:body", "argument_missing:order_id"]),
        ("refund before the lookup", "deny", ["step_out_of_order:refund", "binding_unresolved:order_id"]),
        ("look up the order", "allow", []),
        ("refund ORD-5003 in full", "deny", ["binding_mismatch:order_id"]),
        ("refund 129.00 EUR, own token in _meta", "allow", []),
        ("send the refund again", "deny", ["step_out_of_order:refund"]),
        ("note the refund on the ticket", "allow", []),
    ]
    assert all(c.decision_id and c.decision_id.startswith("dec_") for c in t.calls if c.outcome == "deny")
    [task] = t.tasks  # only the task the support queue began: the agent began none of its own
    assert task == assigned and task_status(gateway, task) == "completed"
    refused = [c.decision_id for c in t.calls if c.tool == "intentgate__begin_task"]
    for decision_id in refused:  # each attempt to re-plan is in the decision log
        [d] = rows(gateway.config.data_dir / "intentgate.db", "SELECT kind, outcome, reasons, agent FROM decisions"
                   " WHERE id = ?", decision_id)
        assert d == {"kind": "task/begin", "outcome": "deny", "reasons": '["task_issuer_required"]',
                     "agent": hijacked_agent.AGENT}
    assert rows(gateway.config.data_dir / "intentgate.db",
                "SELECT id FROM tasks WHERE params LIKE '%evil.example%' OR params LIKE '%ORD-5003%'") == []
    # nothing reached ops@evil.example
    assert rows(server_db(gateway, "email"), "SELECT * FROM outbox WHERE to_addr LIKE '%evil.example%'") == []
    # exactly the legitimate refund landed, authorised by the token the gateway minted, not the smuggled one
    refunds = rows(server_db(gateway, "payments"), "SELECT * FROM refunds WHERE task = ?", task)
    assert [(r["order_id"], r["amount_cents"]) for r in refunds] == [("ORD-5002", 12900)]
    allowed = [d for d in decisions(gateway, task) if d["tool"] == "payments.refund" and d["outcome"] == "allow"]
    assert [refunds[0]["token_id"]] == [d["token_jti"] for d in allowed]
    assert refunds[0]["token_id"] not in hijacked_agent.SMUGGLED_TOKEN
    assert rows(server_db(gateway, "payments"), "SELECT * FROM refunds WHERE order_id = 'ORD-5003' AND task = ?",
                task) == []


async def triage_task(queue: Orchestrator) -> str:
    started = await queue.begin(llm_style_agent.AGENT, "triage-ticket", llm_style_agent.PARAMS, "triage TCK-1001")
    return str(started["task"])


async def test_llm_style_agent_sets_no_meta_and_corrects_itself(gateway: DemoGateway, queue: Orchestrator) -> None:
    given = await triage_task(queue)
    t = await llm_style_agent.run(gateway.mcp_url, gateway.agent_token(llm_style_agent.AGENT), task=given, say=None)
    assert verdicts(t) == [
        ("read the ticket", "deny", ["missing_task_context"]),
        ("read the ticket, with the task context", "allow", []),
        ("list the customer's orders, page 1", "allow", []),
        ("list the customer's orders, page 2", "allow", []),
        ("list the customer's orders, page 3", "allow", []),
        ("leave a triage comment", "allow", []),
    ]
    [task] = t.tasks
    assert task == given and task_status(gateway, task) == "ended"  # ended by the agent, before the optional notify
    # the call without context could not name the task: it is recorded, under no task
    assert [d["step"] for d in decisions(gateway, task)] == [
        "read_ticket", "list_orders", "list_orders", "list_orders", "comment"]
    [orphan] = rows(gateway.config.data_dir / "intentgate.db", "SELECT task_id, reasons FROM decisions WHERE id = ?",
                    t.calls[0].decision_id)
    assert orphan == {"task_id": None, "reasons": '["missing_task_context"]'}
    # the gateway stripped intent_task / intent_step: the tool server saw its own arguments only
    assert t.calls[2].result["orders"] and t.calls[4].result["next_page"] is None
    assert "tools/list" in t.notes[0] and "6 of the 6 gated ones" in t.notes[0]
    comments = rows(server_db(gateway, "tickets"), "SELECT body FROM comments WHERE ticket_id = 'TCK-1001'")
    assert any(c["body"].startswith("Triage: 12 orders on file for alice.martin@example.com") for c in comments)


async def test_llm_style_agent_from_the_command_line(gateway: DemoGateway, queue: Orchestrator) -> None:
    token = gateway.agent_token(llm_style_agent.AGENT)
    task = await triage_task(queue)
    out = subprocess.run(
        [sys.executable, "-m", "agents_examples.llm_style_agent", "--url", gateway.mcp_url, "--token", token,
         "--task", task, "--json"], check=False, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "[llm-style] read the ticket: tickets__get_ticket" in out.stdout
    transcript = json.loads(out.stdout[out.stdout.index("\n{") + 1:])
    assert [c["outcome"] for c in transcript["calls"]] == ["deny"] + ["allow"] * 5


def test_support_agent_over_stdio(tmp_path: Path) -> None:
    """``--stdio CONFIG``: the agent starts ``intentgate stdio`` itself (own servers, own data), and
    begins its task from the task grant its host signed (``intentgate task grant``)."""
    config = write_config(tmp_path)
    token = DevIssuer(KeySet.open_or_create(load_config(config).agent_issuer_keys_dir)).mint(AGENTS["support"])
    grant = subprocess.run(
        [sys.executable, "-m", "intentgate", "task", "grant", "-c", str(config), "--agent", AGENTS["support"],
         "--intent", "refund-order", "-p", "ticket_id=TCK-1001", "-p", "order_id=ORD-5001",
         "--reason", "refund requested in TCK-1001"], check=True, cwd=ROOT, capture_output=True, text=True,
        timeout=60).stdout.strip()
    out = subprocess.run(
        [sys.executable, "-m", "agents_examples.support_agent", "--stdio", str(config), "--grant", grant, "--json"],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=180, env={**os.environ, _agent.TOKEN_ENV: token},
    )
    assert out.returncode == 0, out.stderr
    transcript = json.loads(out.stdout[out.stdout.index("\n{") + 1:])
    assert [(c["label"], c["outcome"]) for c in transcript["calls"]] == [
        ("read the ticket", "allow"), ("look up the order", "allow"), ("refund 42.50 EUR", "allow"),
        ("note the refund on the ticket", "allow")]
    [refund] = rows(tmp_path / "servers" / "payments.db", "SELECT * FROM refunds")
    assert (refund["order_id"], refund["amount_cents"], refund["task"]) == ("ORD-5001", 4250, transcript["tasks"][0])


def test_an_agent_needs_a_token_and_a_task() -> None:
    env = {k: v for k, v in os.environ.items() if k != _agent.TOKEN_ENV}
    out = subprocess.run([sys.executable, "-m", "agents_examples.hijacked_agent", "--url", "http://127.0.0.1:9/mcp",
                          "--task", "tsk_x"], check=False, cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2 and "--token" in out.stderr
    out = subprocess.run([sys.executable, "-m", "agents_examples.support_agent", "--token", "t"],
                         check=False, cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2 and "--task" in out.stderr and "--grant" in out.stderr


async def test_only_the_support_queue_begins_tasks(gateway: DemoGateway, queue: Orchestrator) -> None:
    """The queue may begin refund-order for a support agent; an agent's own token is no task issuer's,
    and the queue may not begin what its config does not list (rotate-credential)."""
    impostor = Orchestrator(gateway.base_url, gateway.agent_token(support_agent.AGENT))
    with pytest.raises(TaskRefused) as not_issuer:
        await impostor.assign_refund(support_agent.AGENT, "TCK-1003")
    assert not_issuer.value.code == "issuer_not_permitted" and not_issuer.value.decision_id
    with pytest.raises(TaskRefused) as not_listed:
        await queue.begin("spiffe://example.org/agent/ops-1", "rotate-credential",
                          {"service": "billing", "owner_email": "o@example.org"}, "rotation")
    assert not_listed.value.code == "issuer_not_permitted"


async def test_reviewer_scenario_held_refund_and_break_glass(gateway: DemoGateway, queue: Orchestrator) -> None:
    t = await reviewer_scenario.run(
        gateway.mcp_url, gateway.agent_token(reviewer_scenario.AGENT), admin_token=gateway.admin_token(),
        orchestrator=queue, oncall_token=gateway.agent_token(reviewer_scenario.ONCALL_AGENT), say=None,
    )
    held, retried = t.call("refund 1800.00 EUR"), t.call("send the identical refund again")
    assert held.outcome == "hold" and held.reasons == ["policy_hold", "policy:large_refund"] and held.approval_id
    assert retried.outcome == "allow" and retried.reasons == [f"approved:{held.approval_id}"]
    actions = {r["action"]: r for r in t.reviews}
    assert actions["approve the refund"]["status"] == 200
    assert actions["approve it again"]["status"] == 409
    denied, granted = t.call("refund without the lookup"), t.call("refund without the lookup, under the grant")
    assert denied.outcome == "deny" and denied.codes == ["step_out_of_order", "binding_unresolved"]
    grant = actions["open a 15-minute break-glass grant"]
    assert grant["status"] == 201 and grant["body"]["id"].startswith("grt_")
    assert granted.outcome == "allow" and granted.reasons[0] == f"break_glass:{grant['body']['id']}"
    needs_review = actions["list grants that need review"]["body"]
    assert grant["body"]["id"] in json.dumps(needs_review)
    assert actions["sign the grant off"]["status"] == 200
    held_task, glass_task = t.tasks
    assert task_status(gateway, held_task) == "completed" and task_status(gateway, glass_task) == "completed"
    refunds = rows(server_db(gateway, "payments"), "SELECT order_id, amount_cents, currency, agent FROM refunds"
                   " WHERE task IN (?, ?) ORDER BY seq", held_task, glass_task)
    assert refunds == [
        {"order_id": "ORD-5003", "amount_cents": 180000, "currency": "EUR", "agent": reviewer_scenario.AGENT},
        {"order_id": "ORD-5004", "amount_cents": 7500, "currency": "USD", "agent": reviewer_scenario.ONCALL_AGENT},
    ]
