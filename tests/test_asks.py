"""What an upstream asks of the agent's client mid-call (sampling, elicitation, roots): relayed
to the agent whose call it is, decided by the Rego policy (asks.rego) and recorded.  Real SDK
client, `intentgate stdio`, and a subprocess upstream (tests/servers/asking_server.py) that
asks over both the 2026-07-28 protocol (the question inside the call's result) and earlier
ones (a request of its own while the call runs)."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
import yaml
from mcp import Client

from tests.test_front_stdio import make_gateway

SERVER = Path(__file__).parent / "servers" / "asking_server.py"

INTENT = """
name: file-claim
version: "1"
agents: ["spiffe://example.org/agent/support-*"]
begin: [agent]
params: {claim_id: {type: string}}
start: [confirm, draft, where, open_link]
steps:
  confirm: {tool: claims.confirm, asks: [elicitation], next: [draft], arguments: {claim_id: {type: string}}}
  draft:
    tool: claims.draft
    asks: [sampling]
    max_calls: 3
    arguments: {claim_id: {type: string}, all_servers: {type: boolean, optional: true}}
  where: {tool: claims.where}
  lookup: {tool: claims.lookup, free: true, arguments: {claim_id: {type: string}}}
  open_link: {tool: claims.open_link, asks: [elicitation]}
"""


def gateway(tmp_path: Path, protocol: str = "auto", ask_env: dict[str, str] | None = None) -> Any:
    intents = tmp_path / "intents"
    intents.mkdir(exist_ok=True)
    (intents / "file-claim.yaml").write_text(INTENT)
    params = make_gateway(tmp_path, intents_dir=intents)
    cfg = tmp_path / "intentgate.yaml"
    doc = yaml.safe_load(cfg.read_text())
    doc["upstreams"] = [{"name": "claims", "command": sys.executable, "args": [str(SERVER)],
                         "env": ask_env or {}, "timeout_seconds": 10, "protocol": protocol}]
    cfg.write_text(yaml.safe_dump(doc))
    return params


class Agent:
    """The agent's own client callbacks: what it was asked, and what it answers."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, Any]] = []

    async def sampling(self, ctx: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        self.asked.append(("sampling", params))
        return types.CreateMessageResult(role="assistant", model="test-model",
                                         content=types.TextContent(type="text", text="drafted"))

    async def elicitation(self, ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.asked.append(("elicitation", params))
        return types.ElicitResult(action="accept", content={"go_on": True})

    async def roots(self, ctx: Any) -> types.ListRootsResult:
        self.asked.append(("roots", None))
        return types.ListRootsResult(roots=[types.Root(uri="file:///work/claims")])

    def client(self, params: Any, *, with_roots: bool = True) -> Client:
        return Client(params, mode="legacy", sampling_callback=self.sampling, elicitation_callback=self.elicitation,
                      list_roots_callback=self.roots if with_roots else None)


def asks(tmp_path: Path) -> list[tuple[str, str | None, str, list[str]]]:
    db = sqlite3.connect(tmp_path / "intentgate.db")
    rows = db.execute("SELECT kind, step, outcome, reasons FROM decisions WHERE kind NOT IN "
                      "('tools/call', 'task/begin') ORDER BY seq").fetchall()
    db.close()
    return [(k, s, o, json.loads(r)) for k, s, o, r in rows]


async def begin(client: Client) -> str:
    r = await client.call_tool("intentgate__begin_task", {"intent": "file-claim", "params": {"claim_id": "C-1"},
                                                          "reason": "user filed a claim"})
    assert not r.is_error, r.content
    return r.structured_content["task"]


def meta(task: str, step: str) -> dict[str, str]:
    return {"intentgate/task": task, "intentgate/step": step}


PROTOCOLS = pytest.mark.parametrize("protocol", ["auto", "legacy"])  # the gateway's leg to the upstream


def refusal(result: types.CallToolResult, protocol: str) -> dict[str, Any]:
    """What the agent learns of a refused ask: on 2026-07-28 the refusal ends the call (the
    gateway says why); on earlier protocols the upstream got the error and reports it."""
    if protocol == "auto":
        assert result.is_error
        decision = result.meta["intentgate/decision"]
        assert decision["outcome"] == "allow" and "refused" in decision["explanation"]
        return {"decision_id": decision["ask_decision_id"], "reasons": decision["reasons"]}
    refused = result.structured_content["refused"]
    assert refused["code"] == -32012
    return refused["data"]


@PROTOCOLS
async def test_listed_asks_reach_the_calling_agent_and_are_recorded(tmp_path: Path, protocol: str) -> None:
    agent = Agent()
    async with agent.client(gateway(tmp_path, protocol)) as client:
        task = await begin(client)
        r = await client.call_tool("claims__confirm", {"claim_id": "C-1"}, meta=meta(task, "confirm"))
        assert not r.is_error, r.content
        assert r.structured_content["answer"] == {"action": "accept", "content": {"go_on": True}}
        kind, asked = agent.asked[-1]
        assert kind == "elicitation" and asked.message == "File claim C-1?"
        r = await client.call_tool("claims__draft", {"claim_id": "C-1"}, meta=meta(task, "draft"))
        assert r.structured_content["answer"]["content"]["text"] == "drafted", r.structured_content
        assert agent.asked[-1][0] == "sampling"
    assert asks(tmp_path) == [("elicitation/create", "confirm", "allow", []),
                              ("sampling/createMessage", "draft", "allow", [])]


@PROTOCOLS
async def test_unlisted_asks_are_refused_before_the_agent_sees_them(tmp_path: Path, protocol: str) -> None:
    agent = Agent()
    async with agent.client(gateway(tmp_path, protocol)) as client:
        task = await begin(client)
        # roots were not listed for `where`, URL mode not for `open_link` (form mode is)
        r = await client.call_tool("claims__where", {}, meta=meta(task, "where"))
        refused = refusal(r, protocol)
        assert refused["reasons"] == ["policy_denied", "policy:ask_not_permitted"]
        assert refused["decision_id"].startswith("dec_")
        task = await begin(client)
        r = await client.call_tool("claims__open_link", {}, meta=meta(task, "open_link"))
        assert refusal(r, protocol)["reasons"][-1] == "policy:ask_not_permitted"
        # a listed sampling ask may still not pull in what the client holds from other servers
        task = await begin(client)
        r = await client.call_tool("claims__draft", {"claim_id": "C-1", "all_servers": True},
                                   meta=meta(task, "draft"))
        assert refusal(r, protocol)["reasons"][-1] == "policy:sampling_include_context"
    assert agent.asked == []
    assert [(k, s, o) for k, s, o, _ in asks(tmp_path)] == [
        ("roots/list", "where", "deny"), ("elicitation/create", "open_link", "deny"),
        ("sampling/createMessage", "draft", "deny")]
    if protocol == "auto":  # the call's outcome says why it ended
        db = sqlite3.connect(tmp_path / "intentgate.db")
        statuses = [s for (s,) in db.execute("SELECT status FROM call_outcomes ORDER BY at")]
        db.close()
        assert statuses == ["ask_refused"] * 3


async def test_an_agent_that_cannot_take_the_ask_is_not_asked(tmp_path: Path) -> None:
    params = gateway(tmp_path, "legacy")
    (tmp_path / "intents" / "file-claim.yaml").write_text(
        INTENT.replace("where: {tool: claims.where}", "where: {tool: claims.where, asks: [roots]}"))
    agent = Agent()
    async with agent.client(params, with_roots=False) as client:
        task = await begin(client)
        r = await client.call_tool("claims__where", {}, meta=meta(task, "where"))
        assert refusal(r, "legacy")["reasons"] == ["ask_unsupported:roots"]
    assert agent.asked == []
    assert asks(tmp_path)[-1][:3] == ("roots/list", "where", "deny")


@PROTOCOLS
async def test_asks_of_concurrent_calls_go_to_their_own_call_or_to_none(tmp_path: Path, protocol: str) -> None:
    """Two calls in flight on the one upstream session.  On 2026-07-28 each ask rides its own
    call's result, so each is put to the agent once, for its own claim; on earlier protocols
    nothing ties an ask to a call, so both are refused (ask_unattributed) and no one is asked."""
    agent = Agent()
    async with agent.client(gateway(tmp_path, protocol, {"ASK_WITH": "2"})) as client:
        tasks = {"C-1": await begin(client), "C-2": await begin(client)}
        results: dict[str, types.CallToolResult] = {}

        async def call(claim: str) -> None:
            results[claim] = await client.call_tool("claims__draft", {"claim_id": claim},
                                                    meta=meta(tasks[claim], "draft"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "C-1")
            tg.start_soon(call, "C-2")
    if protocol == "auto":
        texts = sorted(p.messages[0].content.text for _, p in agent.asked)
        assert texts == ["Draft a note for claim C-1", "Draft a note for claim C-2"]
        assert all(r.structured_content["answer"]["content"]["text"] == "drafted" for r in results.values())
        assert [o for _, _, o, _ in asks(tmp_path)] == ["allow", "allow"]
    else:
        assert agent.asked == []
        for r in results.values():
            assert refusal(r, protocol)["reasons"] == ["ask_unattributed:2 calls in flight"]
        assert [(k, o) for k, _, o, _ in asks(tmp_path)] == [("sampling/createMessage", "deny")] * 2


@pytest.mark.parametrize("allowed", [True, False])
async def test_an_elicitations_completion_goes_to_the_agent_it_was_put_to_only(tmp_path: Path, allowed: bool) -> None:
    """`open_link` puts a URL-mode elicitation (`el-1`) to the agent, then says `el-1` and
    `el-other` are complete.  The agent hears of `el-1` only if it was shown it (the step lists
    `elicitation_url`), and never of `el-other`, which the gateway put to no one."""
    params = gateway(tmp_path, "legacy")
    if allowed:
        (tmp_path / "intents" / "file-claim.yaml").write_text(INTENT.replace(
            "open_link: {tool: claims.open_link, asks: [elicitation]}",
            "open_link: {tool: claims.open_link, asks: [elicitation_url]}"))
    agent = Agent()
    heard: list[Any] = []

    async def message(msg: Any) -> None:
        if isinstance(msg, types.ElicitCompleteNotification):
            heard.append(msg.params.elicitation_id)

    client = Client(params, mode="legacy", elicitation_callback=agent.elicitation, message_handler=message)
    async with client:
        task = await begin(client)
        r = await client.call_tool("claims__open_link", {}, meta=meta(task, "open_link"))
        assert ("answer" if allowed else "refused") in r.structured_content, r
        await client.call_tool("claims__lookup", {"claim_id": "C-1"}, meta=meta(task, "lookup"))  # a round trip after
        with anyio.move_on_after(1 if allowed else 0.3):
            while allowed and not heard:
                await anyio.sleep(0.05)
    assert heard == (["el-1"] if allowed else [])
    assert [a[0] for a in agent.asked] == (["elicitation"] if allowed else [])
    assert asks(tmp_path)[-1][:3] == ("elicitation/create", "open_link", "allow" if allowed else "deny")
