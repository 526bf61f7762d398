"""OpenTelemetry tracing, recorded with the SDK's in-memory exporter: the gateway's own app in
this process on a loopback port, a real MCP client over Streamable HTTP, and a real
subprocess upstream (``tests/servers/tool_server.py``, which echoes the trace context it
receives in ``_meta``).  Tracing off, the front runs over the SDK's in-memory transport; the
OTLP exporter posts to a collector stand-in on loopback."""

from __future__ import annotations

import json
import secrets
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2
import pytest
import uvicorn
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from intentgate.config import load_config
from intentgate.decide import CallRequest
from intentgate.front import Front
from intentgate.identity import AgentIdentity, DevIssuer
from intentgate.keys import KeySet
from intentgate.runtime import Runtime
from intentgate.tracing import OFF
from intentgate.upstreams import UpstreamPool
from intentgate.web import create_app
from tests.conftest import POLICY_DIR, ROOT
from tests.processes import free_port, startup_budget

pytestmark = pytest.mark.slow

SERVER = ROOT / "tests" / "servers" / "tool_server.py"
SUPPORT = "spiffe://example.org/agent/support-1"
INTENT = """
name: traced
version: "1"
agents: ["spiffe://example.org/agent/support-*"]
begin: [agent]
params: {ticket_id: {type: string}}
start: [read]
steps:
  read:
    tool: tickets.get_ticket
    arguments: {ticket_id: {bind: params.ticket_id}}
    next: [read, close]
    max_calls: 100
  close: {tool: tickets.add_comment}
"""
STAGES = {f"intentgate.decide.{s}" for s in ("task", "workflow", "policy", "token")}


def write_config(tmp_path: Path, tracing: dict[str, Any]) -> Path:
    """A gateway with one intent and one upstream (``tickets``, verifying every action token)."""
    intents = tmp_path / "intents"
    intents.mkdir()
    (intents / "traced.yaml").write_text(INTENT)
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(KeySet.open_or_create(tmp_path / "keys" / "action").jwks()))
    cfg = tmp_path / "intentgate.yaml"
    cfg.write_text(yaml.safe_dump({
        "intents_dir": str(intents), "policy_dir": str(POLICY_DIR), "data_dir": str(tmp_path),
        "upstreams": [{"name": "tickets", "command": sys.executable, "args": [str(SERVER), "--name", "tickets"],
                       "env": {"INTENTGATE_JWKS": str(jwks)}}],
        "telemetry": {"tracing": tracing},
    }))
    return cfg


def traceparent(trace_id: int, span_id: int, flags: str = "01") -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{flags}"


def random_context() -> tuple[int, int]:
    return secrets.randbits(128) | 1, secrets.randbits(64) | 1


class Gateway:
    """``create_app`` served by uvicorn on a thread of its own, its spans in ``exporter``."""

    def __init__(self, tmp_path: Path) -> None:
        self.data_dir = tmp_path
        self.app = create_app(load_config(write_config(tmp_path, {"enabled": True, "exporter": "none"})))
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_config=None,
                                                    log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, name="gateway", daemon=True)
        self.exporter = InMemorySpanExporter()

    def __enter__(self) -> Gateway:
        self.thread.start()
        deadline = time.monotonic() + startup_budget(60)
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.05)
        self.app.state.runtime.tracing.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(60)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self) -> str:
        return DevIssuer(KeySet.open_or_create(self.data_dir / "keys" / "agent-issuer")).mint(SUPPORT)

    def last_decision(self) -> str:
        db = sqlite3.connect(self.data_dir / "intentgate.db")
        (decision_id,) = db.execute("SELECT id FROM decisions WHERE kind='tools/call' ORDER BY seq DESC").fetchone()
        db.close()
        return decision_id

    def trace_of(self, span: ReadableSpan) -> dict[str, ReadableSpan]:
        """The finished spans of ``span``'s trace, by name (each name once in one tool call's trace)."""
        spans = [s for s in self.exporter.get_finished_spans() if s.context.trace_id == span.context.trace_id]
        by_name = {s.name: s for s in spans}
        assert len(by_name) == len(spans), sorted(s.name for s in spans)
        return by_name

    def request_span(self, trace_id: int | None = None) -> ReadableSpan:
        """The newest span of a tools/call request to ``tickets__get_ticket`` (of ``trace_id``)."""
        found = [s for s in self.exporter.get_finished_spans() if s.name == "tools/call tickets__get_ticket"
                 and (trace_id is None or s.context.trace_id == trace_id)]
        assert found, "no request span"
        return found[-1]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with Gateway(tmp_path_factory.mktemp("traced-gateway")) as gw:
        yield gw


@asynccontextmanager
async def agent(gw: Gateway, headers: dict[str, str] | None = None) -> AsyncIterator[tuple[Client, str]]:
    """An MCP client of the gateway, and a task it began."""
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {gw.token()}", **(headers or {})},
                                  timeout=30) as http:
        async with Client(streamable_http_client(f"{gw.base}/mcp", http_client=http)) as client:
            yield client, await begin(client)


async def begin(client: Client) -> str:
    r = await client.call_tool("intentgate__begin_task", {"intent": "traced", "params": {"ticket_id": "TCK-1"},
                                                          "reason": "tracing test"})
    assert not r.is_error, r.content
    return r.structured_content["task"]


async def read(client: Client, task: str, **trace_meta: Any) -> dict[str, Any]:
    """One allowed call; the upstream's echo of what it received."""
    r = await client.call_tool("tickets__get_ticket", {"ticket_id": "TCK-1"},
                               meta={"intentgate/task": task, "intentgate/step": "read", **trace_meta})
    assert not r.is_error, r.content
    assert r.structured_content["verified_jti"]  # the tool server verified the action token
    return r.structured_content


def forwarded(echo: dict[str, Any]) -> tuple[int, int, bool]:
    """The trace id, parent span id and sampled flag of the ``traceparent`` the upstream received."""
    version, trace_id, span_id, flags = echo["traceparent"].split("-")
    assert version == "00"
    return int(trace_id, 16), int(span_id, 16), bool(int(flags, 16) & 1)


async def test_a_tool_call_is_one_trace_from_request_to_upstream(gateway: Gateway) -> None:
    async with agent(gateway) as (client, task):
        echo = await read(client, task)
    request = gateway.request_span()
    spans = gateway.trace_of(request)
    decision_id = gateway.last_decision()
    assert {"tools/call tickets__get_ticket", "intentgate.decide", "intentgate.store.commit", "tools/call get_ticket",
            "intentgate.store.outcome", *STAGES} <= set(spans), sorted(spans)
    decide, commit, upstream = spans["intentgate.decide"], spans["intentgate.store.commit"], spans["tools/call get_ticket"]

    # one tree: the request (a root: the agent sent no trace context) > decision > stages and commit; > upstream
    assert request.parent is None and request.kind is SpanKind.SERVER
    assert decide.parent.span_id == request.context.span_id
    for name in (*STAGES, "intentgate.store.commit"):
        assert spans[name].parent.span_id == decide.context.span_id, name
        assert decide.start_time <= spans[name].start_time <= spans[name].end_time <= decide.end_time, name
    assert upstream.parent.span_id == request.context.span_id and upstream.kind is SpanKind.CLIENT
    assert spans["intentgate.store.outcome"].parent.span_id == request.context.span_id

    # the decision id on every span that has one, and it is the recorded decision's
    for span in (request, decide, commit, upstream, spans["intentgate.store.outcome"]):
        assert span.attributes["intentgate.decision_id"] == decision_id, span.name
    assert {k: request.attributes.get(k) for k in (
        "mcp.method.name", "gen_ai.operation.name", "gen_ai.tool.name", "network.transport", "intentgate.outcome",
        "intentgate.reasons")} == {
        "mcp.method.name": "tools/call", "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "tickets__get_ticket", "network.transport": "tcp", "intentgate.outcome": "allow",
        "intentgate.reasons": ()}
    assert request.attributes["jsonrpc.request.id"] and request.attributes["mcp.protocol.version"]
    assert {k: decide.attributes[k] for k in ("intentgate.agent", "intentgate.intent", "intentgate.task",
                                              "intentgate.step", "intentgate.tool", "intentgate.outcome")} == {
        "intentgate.agent": SUPPORT, "intentgate.intent": "traced", "intentgate.task": task,
        "intentgate.step": "read", "intentgate.tool": "tickets.get_ticket", "intentgate.outcome": "allow"}
    assert commit.attributes["intentgate.committed"] is True and commit.attributes["db.system.name"] == "sqlite"
    assert upstream.attributes["gen_ai.tool.name"] == "get_ticket"
    assert upstream.attributes["intentgate.upstream"] == "tickets"
    assert request.resource.attributes["service.name"] == "intentgate"

    # what went upstream: the gateway's upstream span as the tool server's parent, and nothing else of trace context
    assert forwarded(echo) == (request.context.trace_id, upstream.context.span_id, True)
    assert "tracestate" not in echo and "baggage" not in echo


async def test_a_refusal_is_on_the_request_span_and_nothing_goes_upstream(gateway: Gateway) -> None:
    async with agent(gateway) as (client, task):
        r = await client.call_tool("tickets__get_ticket", {"ticket_id": "TCK-2"},  # the task is bound to TCK-1
                                   meta={"intentgate/task": task, "intentgate/step": "read"})
    assert r.is_error
    refusal = r.structured_content
    request = gateway.request_span()
    spans = gateway.trace_of(request)
    assert "tools/call get_ticket" not in spans and "intentgate.store.outcome" not in spans
    assert refusal["decision_id"] == request.attributes["intentgate.decision_id"] == \
        spans["intentgate.decide"].attributes["intentgate.decision_id"] == gateway.last_decision()
    for span in (request, spans["intentgate.decide"]):
        assert span.attributes["intentgate.outcome"] == "deny"
        assert list(span.attributes["intentgate.reasons"]) == refusal["reasons"] == ["binding_mismatch:ticket_id"]
    assert request.attributes["error.type"] == "tool_error" and request.status.status_code is StatusCode.ERROR
    assert spans["intentgate.store.commit"].attributes["intentgate.outcome"] == "deny"


async def test_an_agents_trace_context_in_meta_is_continued_and_replaced_upstream(gateway: Gateway) -> None:
    trace_id, span_id = random_context()
    async with agent(gateway) as (client, task):
        echo = await read(client, task, traceparent=traceparent(trace_id, span_id), tracestate="vendor=opaque",
                          baggage="user=alice")
        request = gateway.request_span(trace_id)
        spans = gateway.trace_of(request)
        assert request.parent.span_id == span_id and request.parent.is_remote
        assert spans["intentgate.decide"].parent.span_id == request.context.span_id
        upstream = spans["tools/call get_ticket"]
        assert forwarded(echo) == (trace_id, upstream.context.span_id, True)
        assert upstream.context.span_id != span_id
        assert echo["tracestate"] == "vendor=opaque"  # W3C: a participant passes the tracestate on
        assert "baggage" not in echo  # neither read nor forwarded

        # an agent that says "not sampled" is traced all the same (the gateway samples by trace id)
        other, parent = random_context()
        echo = await read(client, task, traceparent=traceparent(other, parent, "00"))
        upstream = gateway.trace_of(gateway.request_span(other))["tools/call get_ticket"]
        assert forwarded(echo) == (other, upstream.context.span_id, True)


async def test_the_http_traceparent_header_is_read_and_meta_wins(gateway: Gateway) -> None:
    header_trace, header_span = random_context()
    async with agent(gateway, {"traceparent": traceparent(header_trace, header_span)}) as (client, task):
        echo = await read(client, task)
        request = gateway.request_span(header_trace)
        assert request.parent.span_id == header_span
        assert forwarded(echo)[0] == header_trace

        meta_trace, meta_span = random_context()
        echo = await read(client, task, traceparent=traceparent(meta_trace, meta_span))
        assert gateway.request_span(meta_trace).parent.span_id == meta_span
        assert forwarded(echo)[0] == meta_trace


HOSTILE: dict[str, Any] = {
    "garbage": "not a traceparent",
    "empty": "",
    "zero trace id": f"00-{'0' * 32}-{'b' * 16}-01",
    "zero span id": f"00-{'a' * 32}-{'0' * 16}-01",
    "version ff": f"ff-{'a' * 32}-{'b' * 16}-01",
    "upper-case hex": f"00-{'A' * 32}-{'B' * 16}-01",
    "version 00 with a fifth field": f"00-{'a' * 32}-{'b' * 16}-01-extra",
    "too long": f"01-{'a' * 32}-{'b' * 16}-01-" + "x" * 10_000,
    "a forged log line": f"00-{'a' * 32}-{'b' * 16}-01\n{{\"level\": \"CRITICAL\"}}",
    "a number": 1234,
    "a list": [f"00-{'a' * 32}-{'b' * 16}-01"],
    "an object": {"traceparent": f"00-{'a' * 32}-{'b' * 16}-01"},
}


@pytest.mark.parametrize("hostile", list(HOSTILE), ids=list(HOSTILE))
async def test_a_malformed_traceparent_is_ignored(gateway: Gateway, hostile: str) -> None:
    value = HOSTILE[hostile]
    async with agent(gateway) as (client, task):
        echo = await read(client, task, traceparent=value, tracestate="k=" + "v" * 5000)
    request = gateway.request_span()
    assert request.parent is None  # a new trace
    assert request.context.trace_id != int("a" * 32, 16)
    upstream = gateway.trace_of(request)["tools/call get_ticket"]
    assert forwarded(echo) == (request.context.trace_id, upstream.context.span_id, True)
    assert echo["traceparent"] != value and "tracestate" not in echo


async def test_a_hostile_tracestate_is_dropped_and_the_traceparent_kept(gateway: Gateway) -> None:
    trace_id, span_id = random_context()
    async with agent(gateway) as (client, task):
        for state in ("k=v\r\n{\"level\": \"CRITICAL\"}", "UPPER=case", "k=" + "v" * 600,
                      ",".join(f"k{i}=v" for i in range(40))):
            echo = await read(client, task, traceparent=traceparent(trace_id, span_id), tracestate=state)
            assert forwarded(echo)[0] == trace_id and "tracestate" not in echo, state


# ----- tracing off, and sampled out: over the SDK's in-memory transport -------------------------
@asynccontextmanager
async def front(tmp_path: Path, tracing: dict[str, Any]) -> AsyncIterator[tuple[Client, Runtime]]:
    rt = await Runtime.open(load_config(write_config(tmp_path, tracing)))
    pool = UpstreamPool(rt.config.upstreams)

    async def identify(ctx: object) -> AgentIdentity:
        return AgentIdentity(id=SUPPORT)

    try:
        async with Client(Front(rt, pool, identify).server) as client:
            yield client, rt
    finally:
        await pool.aclose()
        await rt.aclose()


async def test_tracing_off_sends_no_trace_context_upstream(tmp_path: Path) -> None:
    """Off, nothing is made or exported, and the agent's trace context goes no further: the MCP
    SDK would pass it on to the upstream, the gateway drops it."""
    async with front(tmp_path, {"enabled": False}) as (client, rt):
        assert rt.tracing is OFF and rt.tracing.provider is None and rt.decider.tracing is OFF
        trace_id, span_id = random_context()
        echo = await read(client, await begin(client), traceparent=traceparent(trace_id, span_id),
                          tracestate="vendor=opaque")
    assert not {"traceparent", "tracestate", "baggage"} & set(echo)
    assert {k for k in echo["meta_keys"] if not k.startswith("io.modelcontextprotocol/")} == {"intentgate/token"}
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)  # nothing installed globally


def test_tracing_off_does_not_load_the_sdk(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"enabled": False})
    code = ("import asyncio, sys\nfrom intentgate.config import load_config\nfrom intentgate.runtime import Runtime\n"
            "async def main():\n    rt = await Runtime.open(load_config(sys.argv[1]))\n    await rt.aclose()\n"
            "asyncio.run(main())\nprint(sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk')))\n")
    out = subprocess.run([sys.executable, "-c", code, str(cfg)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


async def test_a_trace_sampled_out_still_propagates(tmp_path: Path) -> None:
    """``sample_ratio: 0``: nothing recorded, and the upstream still gets the agent's trace (not sampled)."""
    exporter = InMemorySpanExporter()
    async with front(tmp_path, {"enabled": True, "exporter": "none", "sample_ratio": 0}) as (client, rt):
        rt.tracing.provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace_id, span_id = random_context()
        echo = await read(client, await begin(client), traceparent=traceparent(trace_id, span_id))
    got_trace, parent, sampled = forwarded(echo)
    assert (got_trace, sampled) == (trace_id, False) and parent != span_id
    assert exporter.get_finished_spans() == ()


# ----- OTLP/HTTP to a collector ---------------------------------------------------------------
class _Collector(BaseHTTPRequestHandler):
    received: list[tuple[str, dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass


async def test_spans_are_exported_over_otlp_http(tmp_path: Path) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    collector = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    _Collector.received.clear()
    try:
        cfg = write_config(tmp_path, {
            "enabled": True, "exporter": "otlp", "service_name": "intentgate-test", "timeout_seconds": 5,
            "endpoint": f"http://127.0.0.1:{collector.server_address[1]}/v1/traces",
            "headers": {"X-Collector-Token": "t0ken"}})
        rt = await Runtime.open(load_config(cfg))
        try:
            r = await rt.decider.begin_task(AgentIdentity(id=SUPPORT), "traced", {"ticket_id": "TCK-1"}, "otlp test")
            verdict = await rt.decider.decide(CallRequest(
                agent=AgentIdentity(id=SUPPORT), task_id=r.task_id, step="read", upstream="tickets", tool="get_ticket",
                untrusted_arguments={"ticket_id": "TCK-1"}))
            assert verdict.outcome == "allow"
        finally:
            await rt.aclose()  # exports what is queued
    finally:
        collector.shutdown()
        collector.server_close()
    assert _Collector.received, "nothing was exported"
    names, services = [], set()
    for path, headers, body in _Collector.received:
        assert path == "/v1/traces" and headers["x-collector-token"] == "t0ken"
        request = ExportTraceServiceRequest.FromString(body)
        for rs in request.resource_spans:
            services |= {a.value.string_value for a in rs.resource.attributes if a.key == "service.name"}
            names += [s.name for ss in rs.scope_spans for s in ss.spans]
    assert services == {"intentgate-test"}
    assert {"intentgate.decide", "intentgate.store.commit", *STAGES} <= set(names)
