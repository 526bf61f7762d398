"""The rest of the protocol through `intentgate stdio`, with the real SDK client and the
reference server (tests/servers/conformance_server.py) as the upstream: logging/setLevel
applied per connection, completion and subscriptions decided as reads, resource updates only
to subscribers, list changes followed."""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
import yaml
from mcp import Client, MCPError

from tests.conftest import POLICY_DIR
from tests.test_front_stdio import make_gateway

REFERENCE = Path(__file__).parent / "servers" / "conformance_server.py"

# logging/setLevel and resources/subscribe are deprecated as of 2026-07-28: still served, still tested
pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")

INTENT = """
name: reference
version: "1"
agents: ["spiffe://example.org/agent/support-*"]
begin: [agent]
start: [change]
steps:
  change: {tool: conf.test_change_tools}
  log: {tool: conf.test_tool_with_logging, free: true, max_calls: 5}
"""


def gateway(tmp_path: Path, reads: dict[str, Any], *, intent: str = INTENT,
            upstream: dict[str, Any] | None = None) -> Any:
    """`intentgate stdio` with ``intent`` and the policy's ``reads``, in front of one upstream
    (default: the reference server as ``conf``, on a 2025-era protocol)."""
    intents = tmp_path / "intents"
    intents.mkdir()
    (intents / "reference.yaml").write_text(intent)
    policy = tmp_path / "opa"
    shutil.copytree(POLICY_DIR, policy)
    data = json.loads((policy / "intentgate" / "data.json").read_text())
    (policy / "intentgate" / "data.json").write_text(json.dumps({**data, "reads": reads}))
    params = make_gateway(tmp_path, intents_dir=intents)
    cfg = tmp_path / "intentgate.yaml"
    doc = yaml.safe_load(cfg.read_text())
    doc.update(policy_dir=str(policy), upstreams=[
        upstream or {"name": "conf", "command": sys.executable, "args": [str(REFERENCE)], "protocol": "legacy"}])
    cfg.write_text(yaml.safe_dump(doc))
    return params


class Inbox:
    def __init__(self) -> None:
        self.logs: list[types.LoggingMessageNotificationParams] = []
        self.notes: list[Any] = []

    async def log(self, params: types.LoggingMessageNotificationParams) -> None:
        self.logs.append(params)

    async def message(self, message: Any) -> None:
        if not isinstance(message, Exception):
            self.notes.append(message)

    def client(self, params: Any) -> Client:
        return Client(params, mode="legacy", logging_callback=self.log, message_handler=self.message)


def kinds(tmp_path: Path) -> list[tuple[str, str, str]]:
    db = sqlite3.connect(tmp_path / "intentgate.db")
    rows = db.execute("SELECT kind, tool, outcome FROM decisions WHERE kind NOT IN ('tools/call', 'task/begin') "
                      "ORDER BY seq").fetchall()
    db.close()
    return rows


async def begin(client: Client) -> str:
    r = await client.call_tool("intentgate__begin_task", {"intent": "reference", "params": {}, "reason": "test"})
    assert not r.is_error, r.content
    return r.structured_content["task"]


async def test_set_level_applies_to_what_this_connection_gets(tmp_path: Path) -> None:
    inbox = Inbox()
    async with inbox.client(gateway(tmp_path, {})) as client:
        task = await begin(client)
        meta = {"intentgate/task": task, "intentgate/step": "log"}
        await client.set_logging_level("warning")
        r = await client.call_tool("conf__test_tool_with_logging", {}, meta=meta)
        assert not r.is_error
        assert inbox.logs == []  # three info lines, all under the threshold
        await client.set_logging_level("debug")
        await client.call_tool("conf__test_tool_with_logging", {}, meta=meta)
        with anyio.fail_after(5):
            while len(inbox.logs) < 3:
                await anyio.sleep(0.05)
        assert [m.data for m in inbox.logs] == ["Tool execution started", "Tool processing data",
                                                "Tool execution completed"]


async def test_completion_is_decided_as_a_read_of_what_it_completes(tmp_path: Path) -> None:
    reads = {"prompts": {"conf": ["test_prompt_with_arguments"]}, "resources": {}}
    async with Client(gateway(tmp_path, reads), mode="legacy") as client:
        done = await client.complete(types.PromptReference(type="ref/prompt", name="conf__test_prompt_with_arguments"),
                                     {"name": "arg1", "value": "te"})
        assert done.completion.values == ["test-value", "testing"]
        with pytest.raises(MCPError) as refused:  # a prompt that is not listed
            await client.complete(types.PromptReference(type="ref/prompt", name="conf__test_simple_prompt"),
                                  {"name": "x", "value": "te"})
        assert refused.value.error.code == -32010
        assert refused.value.error.data["reasons"] == ["policy_denied", "policy:read_not_permitted"]
        with pytest.raises(MCPError):  # a resource template that is not listed
            await client.complete(types.ResourceTemplateReference(type="ref/resource",
                                                                  uri="conf+test://template/{id}/data"),
                                  {"name": "id", "value": "1"})
    assert kinds(tmp_path) == [("completion/complete", "test_prompt_with_arguments", "allow"),
                               ("completion/complete", "test_simple_prompt", "deny"),
                               ("completion/complete", "test://template/{id}/data", "deny")]


async def test_updates_go_only_to_subscribers_the_policy_allowed(tmp_path: Path) -> None:
    reads = {"resources": {"conf": ["test://watched-resource"]}, "prompts": {}}
    params = gateway(tmp_path, reads)
    inbox = Inbox()
    async with inbox.client(params) as client:
        with pytest.raises(MCPError) as refused:
            await client.subscribe_resource("conf+test://static-text")
        assert refused.value.error.code == -32010
        await client.subscribe_resource("conf+test://watched-resource")
        with anyio.fail_after(5):
            while not any(isinstance(n, types.ResourceUpdatedNotification) for n in inbox.notes):
                await anyio.sleep(0.05)
        updates = [n.params.uri for n in inbox.notes if isinstance(n, types.ResourceUpdatedNotification)]
        assert updates == ["conf+test://watched-resource"]
        await client.unsubscribe_resource("conf+test://watched-resource")
    assert kinds(tmp_path) == [("resources/subscribe", "test://static-text", "deny"),
                               ("resources/subscribe", "test://watched-resource", "allow")]


async def test_an_upstreams_tool_list_change_is_followed_and_passed_on(tmp_path: Path) -> None:
    inbox = Inbox()
    async with inbox.client(gateway(tmp_path, {})) as client:
        task = await begin(client)
        r = await client.call_tool("conf__test_change_tools", {}, meta={"intentgate/task": task,
                                                                       "intentgate/step": "change"})
        assert not r.is_error
        with anyio.fail_after(5):
            while not any(isinstance(n, types.ToolListChangedNotification) for n in inbox.notes):
                await anyio.sleep(0.05)


async def test_a_cancelled_call_is_recorded_as_cancelled_and_the_session_goes_on(tmp_path: Path) -> None:
    from tests.test_front_stdio import FAULTS_INTENT

    intents = tmp_path / "intents"
    intents.mkdir()
    (intents / "faults.yaml").write_text(FAULTS_INTENT)
    async with Client(make_gateway(tmp_path, intents_dir=intents, upstream_timeout=30), mode="legacy") as client:
        r = await client.call_tool("intentgate__begin_task", {"intent": "faults", "params": {}, "reason": "t"})
        task = r.structured_content["task"]
        with anyio.move_on_after(1.5):  # the client gives up: the SDK sends notifications/cancelled
            await client.call_tool("tickets__hang", {}, meta={"intentgate/task": task, "intentgate/step": "hang"})
        r = await client.call_tool("tickets__get_ticket", {"ticket_id": "TCK-1"},
                                   meta={"intentgate/task": task, "intentgate/step": "read"})
        assert not r.is_error
    db = sqlite3.connect(tmp_path / "intentgate.db")
    statuses = db.execute("SELECT d.tool, o.status FROM decisions d JOIN call_outcomes o ON o.decision_id = d.id "
                          "ORDER BY d.seq").fetchall()
    db.close()
    assert statuses == [("tickets.hang", "cancelled"), ("tickets.get_ticket", "ok")]


RETIRING = """
name: retiring
version: "1"
agents: ["spiffe://example.org/agent/support-*"]
begin: [agent]
start: [change]
steps:
  change: {tool: conf.test_change_tools, arguments: {retire: {type: string}}}
  reconnect: {tool: conf.test_reconnection, free: true}
"""


async def test_a_tool_list_change_is_held_against_the_intents_that_use_the_upstream(tmp_path: Path) -> None:
    """The upstream retires a tool an intent step names: the gateway lists the tools again, no
    longer offers the retired one, and logs the intent step that no longer matches (as a start
    against such a catalogue would), naming the upstream, intent and step."""
    from mcp.client.stdio import stdio_client

    params = gateway(tmp_path, {})
    (tmp_path / "intents" / "reference.yaml").write_text(RETIRING)
    inbox = Inbox()
    errlog = tmp_path / "gateway.log"
    with errlog.open("w") as err:
        async with Client(stdio_client(params, errlog=err), mode="legacy", message_handler=inbox.message) as client:
            assert "conf__test_reconnection" in {t.name for t in (await client.list_tools()).tools}
            task = (await client.call_tool("intentgate__begin_task", {"intent": "retiring", "params": {},
                                                                      "reason": "t"})).structured_content["task"]
            r = await client.call_tool("conf__test_change_tools", {"retire": "test_reconnection"},
                                       meta={"intentgate/task": task, "intentgate/step": "change"})
            assert not r.is_error, r
            with anyio.fail_after(5):
                while not any(isinstance(n, types.ToolListChangedNotification) for n in inbox.notes):
                    await anyio.sleep(0.05)
            listed = {t.name for t in (await client.list_tools(cache_mode="bypass")).tools}
            assert "conf__test_reconnection" not in listed and "conf__test_change_tools" in listed
    records = [json.loads(line) for line in errlog.read_text().splitlines() if line.startswith("{")]
    changed = [r for r in records if "after its tools changed" in r["msg"]]
    assert [(r["upstream"], r["intent"], r["step"]) for r in changed] == [("conf", "retiring", "reconnect")], records
    assert "has no tool 'test_reconnection'" in changed[0]["msg"]


async def test_the_schema_the_sdk_checks_headers_against_is_the_listed_one(tmp_path: Path) -> None:
    """`get_tool_input_schema` answers from the upstreams' catalogue what `tools/list` shows,
    so the SDK need not run the whole listing on every 2026-07-28 call."""
    from intentgate.config import load_config
    from intentgate.front import Front
    from intentgate.runtime import Runtime
    from intentgate.upstreams import UpstreamPool

    gateway(tmp_path, {})
    cfg = load_config(tmp_path / "intentgate.yaml")
    rt = await Runtime.open(cfg)
    pool = UpstreamPool(cfg.upstreams)
    try:
        assert await pool.start() == {}
        identity = rt.identity_verifier().verify(_token(tmp_path))

        async def identify(ctx: object) -> Any:
            return identity

        front = Front(rt, pool, identify)
        async with Client(front.server) as client:
            listed = {t.name: t.input_schema for t in (await client.list_tools()).tools}
        assert listed["conf__test_change_tools"] == front._input_schema("conf__test_change_tools")
        assert listed["intentgate__begin_task"] == front._input_schema("intentgate__begin_task")
        assert front._input_schema("conf__no_such_tool") is None and front._input_schema("nope__x") is None
    finally:
        await pool.aclose()
        await rt.aclose()


def _token(tmp_path: Path) -> str:
    from intentgate.identity import DevIssuer
    from intentgate.keys import KeySet
    from tests.test_front_stdio import SUPPORT

    return DevIssuer(KeySet.open_or_create(tmp_path / "keys" / "agent-issuer")).mint(SUPPORT)


async def _pages(list_page: Any, items: str) -> list[list[str]]:
    """Every page of a listing, followed by its cursors: the names (or URIs) on each."""
    pages, cursor = [], None
    while True:
        result = await list_page(cursor=cursor, cache_mode="bypass")
        pages.append([getattr(i, "uri", None) or i.name for i in getattr(result, items)])
        cursor = result.next_cursor
        if cursor is None:
            return pages


async def test_the_gateways_own_listings_are_paged_and_a_stale_cursor_is_refused(tmp_path: Path) -> None:
    """With `front.page_size: 2` every listing comes two at a time behind `nextCursor`, and the
    pages put together are the whole listing, once each; a cursor the gateway did not give, or
    one cut from a listing that has changed since (the upstream retired a tool), is -32602."""
    params = gateway(tmp_path, {})
    (tmp_path / "intents" / "reference.yaml").write_text(RETIRING)
    cfg = tmp_path / "intentgate.yaml"
    doc = yaml.safe_load(cfg.read_text())
    doc.setdefault("front", {})["page_size"] = 2
    cfg.write_text(yaml.safe_dump(doc))
    inbox = Inbox()
    async with inbox.client(params) as client:
        tools = await _pages(client.list_tools, "tools")
        assert [len(p) for p in tools] == [2, 2, 1]
        assert sorted(n for p in tools for n in p) == sorted([
            "intentgate__list_intents", "intentgate__begin_task", "intentgate__end_task",
            "conf__test_change_tools", "conf__test_reconnection"])
        prompts = await _pages(client.list_prompts, "prompts")
        assert [len(p) for p in prompts] == [2, 2]
        assert sorted(n for p in prompts for n in p) == sorted(
            f"conf__{p}" for p in ("test_simple_prompt", "test_prompt_with_arguments",
                                   "test_prompt_with_embedded_resource", "test_prompt_with_image"))
        resources = await _pages(client.list_resources, "resources")
        assert len(resources) > 1 and all(len(p) <= 2 for p in resources)
        uris = [u for p in resources for u in p]
        assert len(uris) == len(set(uris)) and "conf+test://static-text" in uris

        for forged in ("not-a-cursor", "eyJvIjogMX0", ""):
            with pytest.raises(MCPError) as refused:
                await client.list_tools(cursor=forged, cache_mode="bypass")
            assert refused.value.error.code == types.INVALID_PARAMS
            assert refused.value.error.data["reasons"] == ["malformed_request:cursor"]

        second = (await client.list_tools(cache_mode="bypass")).next_cursor
        assert second is not None
        assert len((await client.list_tools(cursor=second, cache_mode="bypass")).tools) == 2  # still good
        task = (await client.call_tool("intentgate__begin_task", {"intent": "retiring", "params": {},
                                                                  "reason": "t"})).structured_content["task"]
        r = await client.call_tool("conf__test_change_tools", {"retire": "test_reconnection"},
                                   meta={"intentgate/task": task, "intentgate/step": "change"})
        assert not r.is_error, r
        with anyio.fail_after(5):
            while not any(isinstance(n, types.ToolListChangedNotification) for n in inbox.notes):
                await anyio.sleep(0.05)
        with pytest.raises(MCPError) as stale:
            await client.list_tools(cursor=second, cache_mode="bypass")
        assert stale.value.error.code == types.INVALID_PARAMS and "changed" in stale.value.error.message
        assert sorted(n for p in await _pages(client.list_tools, "tools") for n in p) == sorted([
            "intentgate__list_intents", "intentgate__begin_task", "intentgate__end_task", "conf__test_change_tools"])
