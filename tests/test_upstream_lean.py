"""The lean tools/call leg (intentgate.upstream_lean) against the SDK's client, side by side: real
tool servers over Streamable HTTP on 127.0.0.1, each reached by two upstreams, one with
``lean: true`` (the default) and one with ``lean: false``.  The same call must give the same
request on the wire, the same result, the same progress and logs, and the same failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import mcp_types as types
import pytest

from intentgate.canonical import arguments_sha256
from intentgate.config import UpstreamConfig
from intentgate.keys import KeySet
from intentgate.tokens import ActionTokenIssuer
from intentgate.upstreams import Upstream, UpstreamError, UpstreamPool
from tests.processes import free_port

SERVERS = Path(__file__).parent / "servers"
pytestmark = pytest.mark.slow


@asynccontextmanager
async def server(argv: list[str], env: dict[str, str] | None = None, path: str = "/mcp") -> AsyncIterator[str]:
    """A test server over Streamable HTTP (``{port}`` in ``argv`` is its port); yields its URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, *(a.format(port=port) for a in argv)], env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}{path}"
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                httpx2.get(url, timeout=2)
                break
            except httpx2.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{argv[0]} did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=15)


@asynccontextmanager
async def both(url: str, **config: Any) -> AsyncIterator[tuple[Upstream, Upstream]]:
    """Two upstreams on ``url``: the lean leg, and the SDK's client only."""
    pool = UpstreamPool([UpstreamConfig(name="lean", url=url, **config),
                         UpstreamConfig(name="sdk", url=url, lean=False, **config)])
    try:
        assert await pool.start() == {}
        lean, sdk = pool.get("lean"), pool.get("sdk")
        assert lean is not None and sdk is not None
        assert lean.lean is not None and sdk.lean is None
        yield lean, sdk
    finally:
        await pool.aclose()


def sdk_call_refused(up: Upstream, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lean upstream's session must not make the call (proves the lean leg answered it)."""
    async def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the call went through the SDK's client")
    monkeypatch.setattr(up._client, "call_tool", refuse)


class Sinks:
    def __init__(self) -> None:
        self.progress: list[tuple[float, float | None, str | None]] = []
        self.logs: list[tuple[str, Any]] = []

    async def on_progress(self, progress: float, total: float | None, message: str | None) -> None:
        self.progress.append((progress, total, message))

    async def on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        self.logs.append((params.level, params.data))


async def outcome(up: Upstream, tool: str, arguments: dict[str, Any], meta: dict[str, Any] | None = None,
                  ) -> tuple[Any, Sinks]:
    """What a call gives: its result as JSON (or its error's code and message), and what the sinks got."""
    sinks = Sinks()
    try:
        result = await up.call_tool(tool, arguments, meta or {"intentgate/token": "tok"},
                                    progress=sinks.on_progress, logs=sinks.on_log)
    except UpstreamError as exc:
        return ("error", exc.code, exc.message.replace(repr(up.name), "<up>")), sinks
    return result.model_dump(mode="json", by_alias=True, exclude_none=True), sinks


@pytest.fixture
def posts(monkeypatch: pytest.MonkeyPatch) -> list[httpx2.Request]:
    """Every tools/call POST the upstreams send."""
    sent: list[httpx2.Request] = []
    original = httpx2.AsyncClient.send

    async def send(self: httpx2.AsyncClient, request: httpx2.Request, **kwargs: Any) -> httpx2.Response:
        if request.method == "POST" and request.headers.get("mcp-method") == "tools/call":
            sent.append(request)
        return await original(self, request, **kwargs)

    monkeypatch.setattr(httpx2.AsyncClient, "send", send)
    return sent


async def test_the_lean_request_is_what_the_sdk_sends(posts: list[httpx2.Request]) -> None:
    async with server([str(SERVERS / "tool_server.py"), "--name", "orders", "--http", "{port}"]) as url, \
            both(url, headers={"X-Api-Key": "k"}) as (lean, sdk):
        meta = {"intentgate/token": "tok-1", "io.modelcontextprotocol/logLevel": "info"}
        got = [await outcome(up, "get_order", {"order_id": "ORD-7"}, meta) for up in (lean, sdk)]
        assert lean.lean is not None and lean.lean.calls == 1 and lean.lean.handed_over == 0
        assert len(posts) == 2  # one POST each: nothing else was sent for the lean call
        (lean_result, lean_sinks), (sdk_result, sdk_sinks) = got
        assert lean_result == sdk_result
        assert lean_result["structuredContent"]["bearer_is_token"] is True  # the action token, as Bearer ...
        assert lean_result["structuredContent"]["had_token"] is True  # ... and in _meta
        assert lean_sinks.progress == sdk_sinks.progress == [(1.0, 2.0, "half way"), (2.0, 2.0, "done")]
        assert lean_sinks.logs == sdk_sinks.logs == [("info", "served get_order")]

    def wire(request: httpx2.Request) -> tuple[dict[str, str], dict[str, Any]]:
        headers = {k: v for k, v in request.headers.items() if k not in ("content-length",)}
        body = json.loads(request.content)
        assert body["params"]["_meta"].pop("progressToken") == body.pop("id")  # the request id, as the SDK does
        return headers, body

    assert wire(posts[0]) == wire(posts[1])
    assert posts[0].headers["authorization"] == "Bearer tok-1"
    assert posts[0].headers["x-api-key"] == "k"


async def test_a_configured_authorization_wins_over_the_token(posts: list[httpx2.Request]) -> None:
    async with server([str(SERVERS / "tool_server.py"), "--name", "orders", "--http", "{port}"]) as url, \
            both(url, headers={"Authorization": "Bearer brokered"}) as (lean, sdk):
        for up in (lean, sdk):
            result, _ = await outcome(up, "get_order", {"order_id": "ORD-7"})
            assert result["structuredContent"]["bearer_is_token"] is False
    assert [p.headers["authorization"] for p in posts] == ["Bearer brokered"] * 2


@pytest.mark.parametrize("tool", [
    "test_simple_text", "test_image_content", "test_audio_content", "test_embedded_resource",
    "test_multiple_content_types", "test_error_handling", "test_tool_with_progress", "test_tool_with_logging",
    "no_such_tool",
])
async def test_results_are_those_of_the_sdk(tool: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with server([str(SERVERS / "conformance_server.py"), "--port", "{port}"]) as url, \
            both(url, timeout_seconds=20) as (lean, sdk):
        sdk_call_refused(lean, monkeypatch)
        got = await outcome(lean, tool, {"io.modelcontextprotocol/logLevel": "debug"} | {"intentgate/token": "t"})
        expected = await outcome(sdk, tool, {"io.modelcontextprotocol/logLevel": "debug"} | {"intentgate/token": "t"})
        assert (got[0], got[1].progress, got[1].logs) == (expected[0], expected[1].progress, expected[1].logs)
        if tool == "test_tool_with_progress":
            assert len(got[1].progress) == 3
        if tool == "no_such_tool":  # a JSON-RPC error: an upstream error, on both paths
            assert got[0][:2] == ("error", "upstream_error")


async def test_structured_content(monkeypatch: pytest.MonkeyPatch) -> None:
    async with server([str(SERVERS / "asking_server.py"), "--http", "{port}"]) as url, both(url) as (lean, sdk):
        sdk_call_refused(lean, monkeypatch)
        got, expected = [await outcome(up, "lookup", {"claim_id": "C-1"}) for up in (lean, sdk)]
        assert got[0] == expected[0]
        assert got[0]["structuredContent"] == {"answer": None, "tool": "lookup"}


@pytest.mark.parametrize("n", [3, "three"])
async def test_the_output_schema_is_checked_as_the_sdk_does(n: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    async with server([str(SERVERS / "asking_server.py"), "--http", "{port}"]) as url, both(url) as (lean, sdk):
        sdk_call_refused(lean, monkeypatch)
        got, expected = [await outcome(up, "count", {"n": n}) for up in (lean, sdk)]
        assert got[0] == expected[0]
        if n == 3:
            assert got[0]["structuredContent"] == {"n": 3}
        else:  # the SDK refuses structured content its schema rejects
            assert got[0] == ("error", "upstream_error", "upstream <up> failed: RuntimeError")


async def test_timeout() -> None:
    async with server([str(SERVERS / "tool_server.py"), "--name", "orders", "--http", "{port}"]) as url, \
            both(url, timeout_seconds=1.5) as (lean, sdk):
        got, expected = await outcome(lean, "hang", {}), await outcome(sdk, "hang", {})
        assert got[0] == expected[0] == ("error", "upstream_timeout", "upstream <up> did not answer within 1.5s")
        assert lean.lean is not None and lean.lean.calls == 0
        assert (await outcome(lean, "get_order", {"order_id": "x"}))[0]["isError"] is False  # the leg still works
        assert lean.lean.calls == 1


async def test_a_server_that_went_away_mid_session() -> None:
    async with server([str(SERVERS / "tool_server.py"), "--name", "orders", "--http", "{port}"]) as url:
        pool = UpstreamPool([UpstreamConfig(name="lean", url=url), UpstreamConfig(name="sdk", url=url, lean=False)])
        assert await pool.start() == {}
    try:
        lean, sdk = pool.get("lean"), pool.get("sdk")
        assert lean is not None and sdk is not None
        got, expected = await outcome(lean, "get_order", {}), await outcome(sdk, "get_order", {})
        assert got[0] == expected[0] == ("error", "upstream_error", "upstream <up> failed: MCPError")
        assert not lean.alive() and not sdk.alive()  # both restart on next use
    finally:
        await pool.aclose()


@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[tuple[list[str], dict[str, str], ActionTokenIssuer]]:
    keys = KeySet.open_or_create(tmp_path / "keys")
    (tmp_path / "jwks.json").write_text(json.dumps(keys.jwks()))
    env = {"INTENTGATE_JWKS": str(tmp_path / "jwks.json"), "EXECUTED": str(tmp_path / "executed.jsonl")}
    yield [str(SERVERS / "faulty_server.py"), "--name", "helpdesk", "--http", "{port}"], env, ActionTokenIssuer(keys)


def token(issuer: ActionTokenIssuer, upstream: str, tool: str) -> dict[str, str]:
    minted = issuer.mint(agent="spiffe://example.org/agent/t", task_id="tsk_1", intent="i", step="s",
                         upstream=upstream, tool=f"{upstream}.{tool}", arguments_sha256=arguments_sha256({}),
                         task_expires_at=time.time() + 60)
    return {"intentgate/token": minted.token}


@pytest.mark.parametrize("fault", ["http_500", "html", "truncated_sse"])
async def test_a_server_that_answers_garbage(fault: str, faulty: Any, tmp_path: Path) -> None:
    argv, env, issuer = faulty
    async with server(argv, env) as url:
        pool = UpstreamPool([UpstreamConfig(name="helpdesk", url=url, timeout_seconds=10)])
        try:
            await pool.start()
            up = pool.get("helpdesk")
            assert up is not None and up.lean is not None
            got, _ = await outcome(up, fault, {}, token(issuer, "helpdesk", fault))
            assert got == ("error", "upstream_error", "upstream <up> failed: MCPError")
            # the next call works (the session is restarted where the SDK's would be)
            ok, _ = await outcome(up, "get_ticket", {}, token(issuer, "helpdesk", "get_ticket"))
            assert ok["structuredContent"]["tool"] == "get_ticket"
        finally:
            await pool.aclose()
        pool = UpstreamPool([UpstreamConfig(name="helpdesk", url=url, timeout_seconds=10, lean=False)])
        try:
            await pool.start()
            up = pool.get("helpdesk")
            assert up is not None
            expected, _ = await outcome(up, fault, {}, token(issuer, "helpdesk", fault))
            assert expected == got
        finally:
            await pool.aclose()
    ran = [json.loads(line)["tool"] for line in (tmp_path / "executed.jsonl").read_text().splitlines()]
    assert ran == [fault, "get_ticket", fault]  # each call ran once


class Relay:
    """Answers asks the way a consenting agent would."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def capabilities(self) -> dict[str, Any]:  # an agent that can take every ask
        return {"sampling": {}, "elicitation": {"form": {}, "url": {}}, "roots": {}}

    async def elicitation(self, params: Any) -> types.ElicitResult:
        self.asked.append("elicitation")
        return types.ElicitResult(action="accept", content={"ok": True})

    async def sampling(self, params: Any) -> types.CreateMessageResult:
        self.asked.append("sampling")
        return types.CreateMessageResult(role="assistant", content=types.TextContent(type="text", text="drafted"),
                                         model="m")

    async def roots(self) -> types.ListRootsResult:
        self.asked.append("roots")
        return types.ListRootsResult(roots=[])


@pytest.mark.parametrize("tool", ["confirm", "draft"])
async def test_input_required_goes_to_the_session(tool: str) -> None:
    """A first round that asks has not run the tool: the session sends it again and drives the asks."""
    async with server([str(SERVERS / "asking_server.py"), "--http", "{port}"]) as url, both(url) as (lean, sdk):
        results = []
        for up in (lean, sdk):
            relay = Relay()
            result = await up.call_tool(tool, {"claim_id": "C-1"}, {"intentgate/token": "t"}, asks=relay)
            results.append((result.model_dump(mode="json", by_alias=True, exclude_none=True), relay.asked))
        assert results[0] == results[1]
        assert results[0][1] == ["elicitation" if tool == "confirm" else "sampling"]
        assert lean.lean is not None and (lean.lean.calls, lean.lean.handed_over) == (0, 1)


async def test_a_legacy_upstream_has_no_lean_leg() -> None:
    async with server([str(SERVERS / "tool_server.py"), "--name", "orders", "--http", "{port}"]) as url:
        pool = UpstreamPool([UpstreamConfig(name="old", url=url, protocol="legacy")])
        try:
            await pool.start()
            up = pool.get("old")
            assert up is not None and up.alive() and up.lean is None
            result, _ = await outcome(up, "get_order", {"order_id": "x"})
            assert result["structuredContent"]["bearer_is_token"] is True
        finally:
            await pool.aclose()


async def test_the_trace_context_sent_is_the_calls_own_span() -> None:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from intentgate.config import TracingConfig
    from intentgate.tracing import Tracing

    tracing = Tracing.open(TracingConfig(enabled=True, exporter="none"))
    assert tracing.provider is not None
    spans = InMemorySpanExporter()
    tracing.provider.add_span_processor(SimpleSpanProcessor(spans))
    try:
        async with server([str(SERVERS / "tool_server.py"), "--name", "orders", "--http", "{port}"]) as url, \
                both(url) as (lean, sdk):
            sent = []
            for up in (lean, sdk):
                up.tracing = tracing
                result, _ = await outcome(up, "get_order", {"order_id": "x"})
                sent.append(result["structuredContent"]["traceparent"])
            assert lean.lean is not None and lean.lean.calls == 1
        calls = [s for s in spans.get_finished_spans() if s.name == "tools/call get_order"]
        assert [[f"{s.context.trace_id:032x}", f"{s.context.span_id:016x}"] for s in calls] == \
            [t.split("-")[1:3] for t in sent]
    finally:
        tracing.shutdown()


async def test_through_the_gateway_asks_and_tokens_over_the_lean_leg(tmp_path: Path) -> None:
    """A real gateway (``intentgate stdio``) in front of the asking server over HTTP: the ask of a
    2026-07-28 call reaches the agent and is decided and recorded, as over stdio (test_asks)."""
    import yaml

    from tests.test_asks import Agent, asks, begin, gateway, meta

    async with server([str(SERVERS / "asking_server.py"), "--http", "{port}"]) as url:
        params = gateway(tmp_path)
        config = tmp_path / "intentgate.yaml"
        doc = yaml.safe_load(config.read_text())
        doc["upstreams"] = [{"name": "claims", "url": url, "timeout_seconds": 10}]
        config.write_text(yaml.safe_dump(doc))
        agent = Agent()
        async with agent.client(params) as client:
            task = await begin(client)
            r = await client.call_tool("claims__lookup", {"claim_id": "C-1"}, meta=meta(task, "lookup"))
            assert r.structured_content == {"answer": None, "tool": "lookup"}, r.content
            r = await client.call_tool("claims__confirm", {"claim_id": "C-1"}, meta=meta(task, "confirm"))
            assert r.structured_content["answer"] == {"action": "accept", "content": {"go_on": True}}, r.content
            assert [kind for kind, _ in agent.asked] == ["elicitation"]
    assert asks(tmp_path) == [("elicitation/create", "confirm", "allow", [])]


async def test_each_call_declares_the_capabilities_of_the_agent_behind_it(tmp_path: Path) -> None:
    """On 2026-07-28 client capabilities go with each request: over the lean leg a call declares
    what its own agent's client can take (an agent that cannot be asked for roots or to elicit
    is not declared to), so the upstream does not ask what no one will answer.  The SDK's
    client (``lean: false``) declares what the gateway's session can take, whoever calls."""
    import yaml
    from mcp import Client

    from tests.test_asks import INTENT, Agent, begin, gateway, meta

    async with server([str(SERVERS / "asking_server.py"), "--http", "{port}"]) as url:
        params = gateway(tmp_path)
        (tmp_path / "intents" / "file-claim.yaml").write_text(
            INTENT.replace("  where: {tool: claims.where}\n",
                           "  where: {tool: claims.where}\n  caps: {tool: claims.capabilities, free: true}\n"
                           "  caps_sdk: {tool: sdk.capabilities, free: true}\n"))
        config = tmp_path / "intentgate.yaml"
        doc = yaml.safe_load(config.read_text())
        doc["upstreams"] = [{"name": "claims", "url": url, "timeout_seconds": 10},
                            {"name": "sdk", "url": url, "timeout_seconds": 10, "lean": False}]
        config.write_text(yaml.safe_dump(doc))
        agent = Agent()

        async def declared(client: Client, tool: str, step: str) -> Any:
            task = await begin(client)
            r = await client.call_tool(tool, {}, meta=meta(task, step))
            assert not r.is_error, r.content
            return r.structured_content["capabilities"]

        async with agent.client(params) as client:  # sampling, elicitation and roots
            everything = await declared(client, "claims__capabilities", "caps")
            via_sdk = await declared(client, "sdk__capabilities", "caps_sdk")
        async with Client(params, mode="legacy", sampling_callback=agent.sampling) as client:  # sampling only
            sampling_only = await declared(client, "claims__capabilities", "caps")
            via_sdk_too = await declared(client, "sdk__capabilities", "caps_sdk")
    assert set(everything) == {"sampling", "elicitation", "roots"} and everything["roots"] == {}
    assert sampling_only == {"sampling": {}}
    assert via_sdk == via_sdk_too and set(via_sdk) == {"sampling", "elicitation", "roots"}
