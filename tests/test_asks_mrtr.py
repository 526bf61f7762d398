"""Asks to agents on the 2026-07-28 protocol, which cannot be sent a request: the gateway
answers the call with its own ``input_required`` (each ask decided and recorded first) under
a request state it seals, and the agent's second call (``input_responses`` + that state) is
checked, recorded and continued upstream without counting as a workflow step.  Real SDK
client on 2026-07-28, ``intentgate stdio``, and the asking server as a subprocess upstream."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
import yaml
from mcp import Client, StdioServerParameters
from mcp.server.request_state import AESGCMRequestStateCodec

from intentgate.identity import DevIssuer
from intentgate.keys import KeySet
from tests.test_asks import SERVER, Agent, asks, begin, gateway, meta
from tests.test_upstream_lean import server

pytestmark = pytest.mark.slow

OTHER_AGENT = "spiffe://example.org/agent/support-2"


def modern(agent: Agent, params: StdioServerParameters) -> Client:
    """The agent's client on 2026-07-28 (its callbacks answer the asks the gateway puts to it)."""
    return Client(params, sampling_callback=agent.sampling, elicitation_callback=agent.elicitation,
                  list_roots_callback=agent.roots)


def calls(tmp_path: Path) -> list[tuple[str, str, str | None, str, list[str]]]:
    db = sqlite3.connect(tmp_path / "intentgate.db")
    rows = db.execute("SELECT id, tool, step, outcome, reasons FROM decisions WHERE kind = 'tools/call' "
                      "ORDER BY seq").fetchall()
    db.close()
    return [(i, t, s, o, json.loads(r)) for i, t, s, o, r in rows]


def outcomes(tmp_path: Path) -> dict[str, tuple[str, str | None]]:
    db = sqlite3.connect(tmp_path / "intentgate.db")
    rows = db.execute("SELECT decision_id, status, detail FROM call_outcomes").fetchall()
    db.close()
    return {d: (s, x) for d, s, x in rows}


def steps_taken(tmp_path: Path, task: str) -> list[str]:
    db = sqlite3.connect(tmp_path / "intentgate.db")
    rows = db.execute("SELECT step FROM task_steps WHERE task_id = ? ORDER BY n", (task,)).fetchall()
    db.close()
    return [s for (s,) in rows]


def with_config(tmp_path: Path, params: StdioServerParameters, **front: Any) -> StdioServerParameters:
    cfg = tmp_path / "intentgate.yaml"
    doc = yaml.safe_load(cfg.read_text())
    doc["front"] = {**doc.get("front", {}), **front}
    cfg.write_text(yaml.safe_dump(doc))
    return params


def as_agent(tmp_path: Path, params: StdioServerParameters, agent_id: str) -> StdioServerParameters:
    """The same gateway (config, database, keys) for another agent."""
    token = DevIssuer(KeySet.open_or_create(tmp_path / "keys" / "agent-issuer")).mint(agent_id)
    return params.model_copy(update={"env": {**(params.env or os.environ), "INTENTGATE_AGENT_TOKEN": token}})


async def ask_round(client: Client, task: str, tool: str = "confirm", args: dict[str, Any] | None = None
                    ) -> types.InputRequiredResult:
    first = await client.session.call_tool(f"claims__{tool}", args if args is not None else {"claim_id": "C-1"},
                                           meta=meta(task, tool), allow_input_required=True)
    assert isinstance(first, types.InputRequiredResult), first
    return first


async def answer(client: Client, state: str | None, responses: dict[str, Any] | None, *, tool: str = "confirm",
                 args: dict[str, Any] | None = None, task: str | None = None) -> types.CallToolResult:
    r = await client.session.call_tool(
        f"claims__{tool}", args if args is not None else {"claim_id": "C-1"},
        meta=meta(task, tool) if task else None, input_responses=responses, request_state=state,
        allow_input_required=True)
    assert isinstance(r, types.CallToolResult), r
    return r


def refused(r: types.CallToolResult) -> list[str]:
    assert r.is_error, r.content
    return r.meta["intentgate/decision"]["reasons"]


GO_ON = {"q": types.ElicitResult(action="accept", content={"go_on": True})}


async def test_a_modern_agent_is_asked_in_the_result_and_its_answer_continues_the_call(tmp_path: Path) -> None:
    agent = Agent()
    async with modern(agent, gateway(tmp_path)) as client:
        assert client.protocol_version == "2026-07-28"
        task = await begin(client)
        # the SDK's client drives the round trip itself: the agent is asked, the tool's result comes back
        r = await client.call_tool("claims__confirm", {"claim_id": "C-1"}, meta=meta(task, "confirm"))
        assert not r.is_error, r.content
        assert r.structured_content["answer"] == {"action": "accept", "content": {"go_on": True}}
        assert agent.asked[-1][0] == "elicitation" and agent.asked[-1][1].message == "File claim C-1?"
        # by hand: the gateway's own input_required, the upstream's question, a state sealed by the gateway
        first = await ask_round(client, task, "draft")
        assert list(first.input_requests or {}) == ["q"]
        assert isinstance(first.input_requests["q"], types.CreateMessageRequest)
        assert first.request_state and first.request_state.startswith("v1.")
        reply = {"q": types.CreateMessageResult(role="assistant", model="m",
                                                content=types.TextContent(type="text", text="by hand"))}
        r = await answer(client, first.request_state, reply, tool="draft")
        assert r.structured_content.get("answer", {}).get("content", {}).get("text") == "by hand", r.content
        # a refused ask ends the call; the agent is never asked
        before = len(agent.asked)
        task2 = await begin(client)
        r = await client.call_tool("claims__where", {}, meta=meta(task2, "where"))
        decision = r.meta["intentgate/decision"]
        assert r.is_error and decision["reasons"] == ["policy_denied", "policy:ask_not_permitted"]
        assert decision["ask_decision_id"].startswith("dec_")
        assert len(agent.asked) == before
    # every round recorded: the call, its ask, the continuation (bound to the call's decision)
    rows = calls(tmp_path)
    confirm = [row for row in rows if row[1] == "claims.confirm"]
    assert [(s, o) for _, _, s, o, _ in confirm] == [("confirm", "allow"), ("confirm", "allow")]
    assert confirm[0][4] == [] and confirm[1][4] == [f"input_continuation:{confirm[0][0]}"]
    done = outcomes(tmp_path)
    assert done[confirm[0][0]][0] == "input_required" and done[confirm[1][0]] == ("ok", None)
    draft = [row for row in rows if row[1] == "claims.draft"]
    assert draft[1][4] == [f"input_continuation:{draft[0][0]}"] and done[draft[1][0]][0] == "ok"
    where = [row for row in rows if row[1] == "claims.where"]
    assert done[where[0][0]][0] == "ask_refused"
    assert [(k, s, o) for k, s, o, _ in asks(tmp_path)] == [
        ("elicitation/create", "confirm", "allow"), ("sampling/createMessage", "draft", "allow"),
        ("roots/list", "where", "deny")]
    # the continuations are not workflow steps
    assert steps_taken(tmp_path, task) == ["confirm", "draft"]


async def test_a_request_state_that_is_not_exactly_the_one_sealed_for_the_call_is_refused(tmp_path: Path) -> None:
    agent = Agent()
    async with modern(agent, gateway(tmp_path)) as client:
        task = await begin(client)
        first = await ask_round(client, task)
        state = first.request_state
        assert state is not None
        flipped = state[:-4] + ("A" if state[-4] != "A" else "B") + state[-3:]
        foreign = AESGCMRequestStateCodec([os.urandom(32)]).seal(b'{"v": 1}')
        assert refused(await answer(client, flipped, GO_ON)) == ["request_state_invalid"]
        assert refused(await answer(client, foreign, GO_ON)) == ["request_state_invalid"]
        assert refused(await answer(client, "not a state", GO_ON)) == ["request_state_invalid"]
        assert refused(await answer(client, state, GO_ON, args={"claim_id": "C-2"})) == [
            "request_state_mismatch:arguments"]
        assert refused(await answer(client, state, GO_ON, tool="draft")) == ["request_state_mismatch:tool"]
        assert refused(await answer(client, state, {"zz": GO_ON["q"]})) == ["input_response_unasked:zz"]
        wrong_kind = {"q": types.ListRootsResult(roots=[])}
        assert refused(await answer(client, state, wrong_kind)) == ["input_response_unasked:q"]
        # none of that used the state up: the right answer continues the call, once
        r = await answer(client, state, GO_ON)
        assert not r.is_error and r.structured_content["answer"]["action"] == "accept", r.content
        assert refused(await answer(client, state, GO_ON)) == ["request_state_replayed"]
        # ending the task voids the states it still has
        task = await begin(client)
        pending = await ask_round(client, task)
        ended = await client.call_tool("intentgate__end_task", {"task": task})
        assert not ended.is_error
        assert refused(await answer(client, pending.request_state, GO_ON)) == ["task_ended:ended"]
    denied = [r for _, _, _, o, r in calls(tmp_path) if o == "deny"]
    assert [r[0] for r in denied] == [
        "request_state_invalid", "request_state_invalid", "request_state_invalid", "request_state_mismatch:arguments",
        "request_state_mismatch:tool", "input_response_unasked:zz", "input_response_unasked:q",
        "request_state_replayed", "task_ended:ended"]
    assert agent.asked == []  # answered by hand


async def test_another_agent_cannot_use_the_state_and_an_old_one_expires(tmp_path: Path) -> None:
    params = with_config(tmp_path, gateway(tmp_path), request_state_ttl_seconds=4)
    other = as_agent(tmp_path, params, OTHER_AGENT)
    async with modern(Agent(), params) as client, modern(Agent(), other) as thief:
        task = await begin(client)
        first = await ask_round(client, task)
        r = await answer(thief, first.request_state, GO_ON, task=task)
        assert refused(r) == ["request_state_mismatch:agent"]
        await anyio.sleep(4.2)
        assert refused(await answer(client, first.request_state, GO_ON)) == ["request_state_expired"]
    rows = calls(tmp_path)
    assert [(o, r) for _, _, _, o, r in rows[-2:]] == [("deny", ["request_state_mismatch:agent"]),
                                                       ("deny", ["request_state_expired"])]


async def test_a_2025_era_upstream_asking_a_modern_agent_is_refused(tmp_path: Path) -> None:
    """The upstream's request cannot be held open across the agent's round trips: refused."""
    agent = Agent()
    async with modern(agent, gateway(tmp_path, "legacy")) as client:
        task = await begin(client)
        r = await client.call_tool("claims__confirm", {"claim_id": "C-1"}, meta=meta(task, "confirm"))
        assert r.structured_content["refused"]["data"]["reasons"] == ["ask_unsupported:elicitation"]
    assert agent.asked == []
    assert asks(tmp_path) == [("elicitation/create", "confirm", "deny", ["ask_unsupported:elicitation"])]


async def test_an_http_upstream_on_the_lean_leg_is_continued_too(tmp_path: Path) -> None:
    """The lean leg hands ``input_required`` over; the continuation carries the upstream's own state."""
    async with server([str(SERVER), "--http", "{port}"]) as url:
        params = gateway(tmp_path)
        cfg = tmp_path / "intentgate.yaml"
        doc = yaml.safe_load(cfg.read_text())
        doc["upstreams"] = [{"name": "claims", "url": url, "timeout_seconds": 10}]
        cfg.write_text(yaml.safe_dump(doc))
        agent = Agent()
        async with modern(agent, params) as client:
            task = await begin(client)
            r = await client.call_tool("claims__confirm", {"claim_id": "C-1"}, meta=meta(task, "confirm"))
            assert r.structured_content["answer"] == {"action": "accept", "content": {"go_on": True}}, r.content
    rows = calls(tmp_path)
    assert [(s, o, r) for _, _, s, o, r in rows] == [("confirm", "allow", []),
                                                     ("confirm", "allow", [f"input_continuation:{rows[0][0]}"])]
    assert steps_taken(tmp_path, task) == ["confirm"]
