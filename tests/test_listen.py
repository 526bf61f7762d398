"""Upstreams on the 2026-07-28 protocol tell of changes only on a `subscriptions/listen` stream:
the gateway keeps one open to each (tests/servers/watching_server.py, over stdio and over
Streamable HTTP), carrying the resource URIs agents subscribed to through it, and passes
what comes on it to the agents it concerns.  Real SDK client, `intentgate stdio`."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client, MCPError

from tests.processes import free_port
from tests.test_protocol import gateway as protocol_gateway
from tests.test_upstream_lean import server

WATCHING = Path(__file__).parent / "servers" / "watching_server.py"
pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")

INTENT = """
name: watch
version: "1"
agents: ["spiffe://example.org/agent/support-*"]
begin: [agent]
start: [grow]
steps:
  touch: {tool: w.touch, free: true, max_calls: 20, arguments: {uri: {type: string}}}
  grow: {tool: w.grow}
  listens: {tool: w.listens, free: true, max_calls: 20}
"""


def gateway(tmp_path: Path, upstream: dict[str, Any]) -> Any:
    reads = {"resources": {"w": ["watch://counter", "watch://quiet"]}, "prompts": {}}
    return protocol_gateway(tmp_path, reads, intent=INTENT, upstream={"name": "w", "timeout_seconds": 10, **upstream})


class Heard:
    def __init__(self) -> None:
        self.notes: list[Any] = []

    async def message(self, message: Any) -> None:
        if isinstance(message, (types.ResourceUpdatedNotification, types.ToolListChangedNotification)):
            self.notes.append(message)

    def updates(self) -> list[str]:
        return [n.params.uri for n in self.notes if isinstance(n, types.ResourceUpdatedNotification)]

    async def until(self, check: Any) -> None:
        with anyio.fail_after(10):
            while not check():
                await anyio.sleep(0.05)


async def call(client: Client, task: str, tool: str, args: dict[str, Any] | None = None) -> Any:
    r = await client.call_tool(f"w__{tool}", args or {}, meta={"intentgate/task": task, "intentgate/step": tool})
    assert not r.is_error, r.content
    return r


async def streams(client: Client, task: str) -> list[list[str]]:
    """The listen streams open at the upstream, and the URIs each carries."""
    return (await call(client, task, "listens")).structured_content["open"]


@pytest.fixture(params=["stdio", "http"])
async def upstream(request: pytest.FixtureRequest) -> Any:
    if request.param == "stdio":
        yield {"command": sys.executable, "args": [str(WATCHING)]}
        return
    async with server([str(WATCHING), "--http", "{port}"]) as url:
        yield {"url": url}


async def test_subscriptions_ride_one_listen_stream_and_reach_only_subscribers(tmp_path: Path, upstream: Any) -> None:
    heard = Heard()
    async with Client(gateway(tmp_path, upstream), mode="legacy", message_handler=heard.message) as client:
        task = (await client.call_tool("intentgate__begin_task", {"intent": "watch", "params": {},
                                                                  "reason": "t"})).structured_content["task"]
        assert await streams(client, task) == [[]]  # list changes only, from the start
        with pytest.raises(MCPError) as refused:  # decided as a read: not in the policy's reads
            await client.subscribe_resource("w+watch://secret")
        assert refused.value.error.code == -32010
        await client.subscribe_resource("w+watch://counter")
        assert await streams(client, task) == [["watch://counter"]]  # the old stream made way
        await call(client, task, "touch", {"uri": "watch://quiet"})  # not subscribed: not heard
        await call(client, task, "touch", {"uri": "watch://counter"})
        await heard.until(lambda: heard.updates())
        assert heard.updates() == ["w+watch://counter"]

        await client.subscribe_resource("w+watch://quiet")
        assert sorted(map(sorted, await streams(client, task))) == [["watch://counter", "watch://quiet"]]
        await client.unsubscribe_resource("w+watch://counter")
        assert await streams(client, task) == [["watch://quiet"]]
        await call(client, task, "touch", {"uri": "watch://counter"})
        await call(client, task, "touch", {"uri": "watch://quiet"})
        await heard.until(lambda: len(heard.updates()) == 2)
        await anyio.sleep(0.3)
        assert heard.updates() == ["w+watch://counter", "w+watch://quiet"]

        await call(client, task, "grow")  # a tool list change, on the same stream
        await heard.until(lambda: any(isinstance(n, types.ToolListChangedNotification) for n in heard.notes))
    db = sqlite3.connect(tmp_path / "intentgate.db")
    subscribes = db.execute("SELECT tool, outcome FROM decisions WHERE kind = 'resources/subscribe' "
                            "ORDER BY seq").fetchall()
    db.close()
    assert subscribes == [("watch://secret", "deny"), ("watch://counter", "allow"), ("watch://quiet", "allow")]


async def test_a_second_agent_is_not_told_of_a_resource_it_did_not_subscribe_to(tmp_path: Path) -> None:
    """Two agents behind one `intentgate serve`, one upstream stream: the update reaches the
    subscriber only."""
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    from intentgate.identity import DevIssuer
    from intentgate.keys import KeySet
    from tests.processes import serve, stop

    async with server([str(WATCHING), "--http", "{port}"]) as url:
        gateway(tmp_path, {"url": url})
        cfg = tmp_path / "intentgate.yaml"
        issuer = DevIssuer(KeySet.open_or_create(tmp_path / "keys" / "agent-issuer"))
        proc = serve(cfg, port := free_port(), tmp_path / "gateway.log")
        base = f"http://127.0.0.1:{port}"
        try:
            a, b = Heard(), Heard()

            def connect(http: httpx2.AsyncClient, heard: Heard) -> Client:
                return Client(streamable_http_client(f"{base}/mcp", http_client=http), mode="legacy",
                              message_handler=heard.message)

            def bearer(agent: str) -> httpx2.AsyncClient:
                return httpx2.AsyncClient(headers={"Authorization": f"Bearer {issuer.mint(agent)}"})

            async with bearer("spiffe://example.org/agent/support-1") as http_a, \
                    bearer("spiffe://example.org/agent/support-2") as http_b, \
                    connect(http_a, a) as first, connect(http_b, b) as second:
                await first.subscribe_resource("w+watch://counter")
                task = (await second.call_tool("intentgate__begin_task", {"intent": "watch", "params": {},
                                                                          "reason": "t"})).structured_content["task"]
                await call(second, task, "touch", {"uri": "watch://counter"})
                await a.until(lambda: a.updates())
                await anyio.sleep(0.3)
                assert a.updates() == ["w+watch://counter"] and b.updates() == []
        finally:
            stop(proc)


async def test_an_agent_on_2026_07_28_listens_to_the_gateway_for_what_it_may_read(tmp_path: Path) -> None:
    """A 2026-07-28 agent opens `subscriptions/listen` on the gateway: the URIs it asks for are
    decided like subscriptions (the one the policy refuses is recorded and not acknowledged),
    the upstream is listened to for the allowed one while the agent's stream is open and let go
    after, and the agent's stream carries that resource's updates and the upstream's tool list
    change, and nothing else."""
    async with Client(gateway(tmp_path, {"command": sys.executable, "args": [str(WATCHING)]})) as client:
        assert client.protocol_version == "2026-07-28"
        task = (await client.call_tool("intentgate__begin_task", {"intent": "watch", "params": {},
                                                                  "reason": "t"})).structured_content["task"]
        events: list[Any] = []
        async with client.listen(tools_list_changed=True,
                                 resource_subscriptions=["w+watch://counter", "w+watch://secret"]) as stream:
            assert stream.honored.resource_subscriptions == ["w+watch://counter"]
            assert stream.honored.tools_list_changed is True
            assert await streams(client, task) == [["watch://counter"]]
            await call(client, task, "touch", {"uri": "watch://quiet"})
            await call(client, task, "touch", {"uri": "watch://counter"})
            await call(client, task, "grow")
            with anyio.fail_after(10):
                async for event in stream:
                    events.append(event)
                    if len(events) == 2:
                        break
        task = (await client.call_tool("intentgate__begin_task", {"intent": "watch", "params": {},
                                                                  "reason": "t"})).structured_content["task"]
        with anyio.fail_after(10):  # `grow` ended the first task
            while await streams(client, task) != [[]]:  # let go upstream once the agent's stream ended
                await anyio.sleep(0.1)
    from mcp.shared.subscriptions import ResourceUpdated, ToolsListChanged

    assert events == [ResourceUpdated(uri="w+watch://counter"), ToolsListChanged()]
    db = sqlite3.connect(tmp_path / "intentgate.db")
    subscribes = db.execute("SELECT tool, outcome FROM decisions WHERE kind = 'resources/subscribe' "
                            "ORDER BY seq").fetchall()
    db.close()
    assert subscribes == [("watch://counter", "allow"), ("watch://secret", "deny")]


async def test_a_2026_07_28_agents_stream_carries_nothing_of_another_agents(tmp_path: Path) -> None:
    """Two 2026-07-28 agents listen on one `intentgate serve` over Streamable HTTP: the one that
    asked for the resource gets its update; the other, listening for tool list changes only,
    does not, though both streams are open on the same gateway."""
    import httpx2
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared.subscriptions import ResourceUpdated

    from intentgate.identity import DevIssuer
    from intentgate.keys import KeySet
    from tests.processes import serve, stop

    async with server([str(WATCHING), "--http", "{port}"]) as url:
        gateway(tmp_path, {"url": url})
        issuer = DevIssuer(KeySet.open_or_create(tmp_path / "keys" / "agent-issuer"))
        proc = serve(tmp_path / "intentgate.yaml", port := free_port(), tmp_path / "gateway.log")
        mcp_url = f"http://127.0.0.1:{port}/mcp"
        try:
            def bearer(agent: str) -> httpx2.AsyncClient:
                return httpx2.AsyncClient(headers={"Authorization": f"Bearer {issuer.mint(agent)}"}, timeout=30)

            got: dict[str, list[Any]] = {"a": [], "b": []}

            async def drain(stream: Any, into: list[Any]) -> None:
                async for event in stream:
                    into.append(event)

            async with bearer("spiffe://example.org/agent/support-1") as http_a, \
                    bearer("spiffe://example.org/agent/support-2") as http_b, \
                    Client(streamable_http_client(mcp_url, http_client=http_a)) as first, \
                    Client(streamable_http_client(mcp_url, http_client=http_b)) as second, \
                    first.listen(resource_subscriptions=["w+watch://counter"]) as stream_a, \
                    second.listen(tools_list_changed=True) as stream_b:
                assert stream_a.honored.resource_subscriptions == ["w+watch://counter"]
                async with anyio.create_task_group() as tg:
                    tg.start_soon(drain, stream_a, got["a"])
                    tg.start_soon(drain, stream_b, got["b"])
                    task = (await second.call_tool("intentgate__begin_task", {
                        "intent": "watch", "params": {}, "reason": "t"})).structured_content["task"]
                    await call(second, task, "touch", {"uri": "watch://counter"})
                    with anyio.fail_after(10):
                        while not got["a"]:
                            await anyio.sleep(0.05)
                    await anyio.sleep(0.3)
                    tg.cancel_scope.cancel()
            assert got == {"a": [ResourceUpdated(uri="w+watch://counter")], "b": []}
        finally:
            stop(proc)
