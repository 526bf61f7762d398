"""Hostile JSON-RPC: random and mutated messages at a running gateway, over both transports.

Streamable HTTP: ``intentgate serve`` as a subprocess on 127.0.0.1 (real upstream tool
servers behind it), raw bodies POSTed to ``/mcp`` in a handshake-era session and as
sessionless 2026-07-28 requests.  stdio: ``intentgate stdio`` as a subprocess, raw lines
written to its stdin.  Messages start from valid ones (tools/call of real tools with a real
task, the gateway's own tools, reads, lists) and are mutated: wrong types for ``name``,
``arguments`` and ``_meta``, huge and deeply nested values, unicode, missing or odd ids,
batches, non-object bodies, invalid UTF-8, truncation.

Properties: no 5xx; every answer is a well-formed JSON-RPC response (an error has a
non-zero code and a message; a refused tool call names the decision's reason codes, never
``internal_error``) or a 4xx with a body; the gateway logs no traceback; afterwards the
process is alive, ``/healthz`` answers 200 and a valid call still works.
"""

from __future__ import annotations

import copy
import json
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp.shared.inbound import encode_header_value

from intentgate.errors import ReasonCode, reason_code_of
from tests.processes import free_port, serve, stop
from tests.test_front_http import agent_token
from tests.tasks import grant_args
from tests.test_front_stdio import PARAMS, SUPPORT, make_gateway

pytestmark = pytest.mark.slow

MAX_REQUEST_BYTES = 65_536
MAX_ARGUMENT_BYTES = 4_096
MODERN = "2026-07-28"
HANDSHAKE = "2025-11-25"
ENVELOPE = {"io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientInfo": {"name": "fuzz", "version": "0"},
            "io.modelcontextprotocol/clientCapabilities": {}}
ACCEPT = "application/json, text/event-stream"

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def configure(tmp_path: Path) -> Path:
    """A gateway config with small limits (so the fuzz reaches them) and no rate limit."""
    make_gateway(tmp_path)
    cfg_path = tmp_path / "intentgate.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["front"] = {"max_request_bytes": MAX_REQUEST_BYTES, "max_argument_bytes": MAX_ARGUMENT_BYTES,
                    "rate_limit_per_second": None}
    cfg_path.write_text(yaml.safe_dump(cfg))
    return cfg_path


def log_problems(text: str) -> list[str]:
    """Lines of a gateway's stderr that show an exception escaped somewhere."""
    return [line for line in text.splitlines()
            if "Traceback" in line or "tools/call failed" in line or "Exception in ASGI" in line
            or "handler for" in line and "raised" in line]


# ----- what every answer must look like ------------------------------------------------------


SEEN_CODES: set[ReasonCode] = set()  # every reason code the fuzz drew out of the gateway


def check_reasons(reasons: Any) -> None:
    assert isinstance(reasons, list) and reasons, reasons
    for text in reasons:
        code = reason_code_of(text)  # raises ValueError for a code outside the enum
        assert code is not ReasonCode.INTERNAL_ERROR, reasons
        SEEN_CODES.add(code)


def check_message(msg: Any, sent_id: Any = None) -> None:
    """One JSON-RPC message from the gateway."""
    assert isinstance(msg, dict) and msg.get("jsonrpc") == "2.0", msg
    if "method" in msg:  # a notification from the server (a log line, progress)
        assert isinstance(msg["method"], str)
        return
    assert ("result" in msg) != ("error" in msg), msg
    if sent_id is not None and msg.get("id") is not None:
        assert msg["id"] == sent_id, (msg, sent_id)
    if "error" in msg:
        err = msg["error"]
        assert isinstance(err, dict) and isinstance(err.get("code"), int), msg
        # code 0 is what the SDK answers when a handler raised something unforeseen (with its text)
        assert err["code"] != 0, msg
        assert isinstance(err.get("message"), str) and err["message"], msg
        assert "Traceback" not in json.dumps(msg)
        if isinstance(err.get("data"), dict) and "reasons" in err["data"]:
            check_reasons(err["data"]["reasons"])
        return
    result = msg["result"]
    assert isinstance(result, dict), msg
    structured = result.get("structuredContent")
    if result.get("isError") and isinstance(structured, dict) and "reasons" in structured:
        check_reasons(structured["reasons"])


def messages_in(response: httpx2.Response) -> list[Any]:
    kind = response.headers.get("content-type", "")
    if kind.startswith("text/event-stream"):
        return [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")
                and line[5:].strip()]
    return [response.json()]


def check_http(response: httpx2.Response, sent_id: Any = None) -> None:
    status = response.status_code
    assert status < 500, (status, response.text[:500])
    if status == 202:  # a notification (or a response) accepted: nothing to answer
        return
    if status == 200:
        found = messages_in(response)
        assert found, response.text[:200]
        for msg in found:
            check_message(msg, sent_id)
        return
    assert 400 <= status < 500, status
    check_refusal(response, sent_id)


def check_refusal(response: httpx2.Response, sent_id: Any = None) -> None:
    """A 4xx says why: a JSON-RPC error, the gateway's own error object, or a line of text."""
    assert response.content, f"{response.status_code} without a body"
    if not response.headers.get("content-type", "").startswith("application/json"):
        assert response.text.strip().isprintable(), response.text[:200]  # "Invalid Content-Type header"
        return
    body = response.json()
    if "jsonrpc" in body:
        check_message(body, sent_id)
        assert "error" in body
    else:
        assert body.get("error") or body.get("detail"), body


# ----- messages: valid ones, and how they are broken -----------------------------------------


def valid_messages(task: str) -> list[dict[str, Any]]:
    ctx = {"intentgate/task": task, "intentgate/step": "read_ticket"}
    calls = [
        ("tickets__get_ticket", {"ticket_id": "TCK-1"}, ctx),
        ("orders__get_order", {"order_id": "ORD-7", "intent_task": task, "intent_step": "lookup"}, None),
        ("payments__refund", {"order_id": "ORD-7", "amount": 5, "currency": "EUR"},
         {"intentgate/task": task, "intentgate/step": "refund"}),
        ("email__send", {"to": "a@example.org", "subject": "s", "body": "b"}, ctx),
        ("intentgate__begin_task", {"intent": "lookup-order", "params": PARAMS, "reason": "fuzz"}, None),
        ("intentgate__end_task", {"task": "tsk_not_this_one"}, None),
        ("intentgate__list_intents", {}, None),
        ("nowhere__thing", {}, ctx),
    ]
    found: list[dict[str, Any]] = []
    for name, arguments, meta in calls:
        params: dict[str, Any] = {"name": name, "arguments": arguments}
        if meta:
            params["_meta"] = meta
        found.append({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params})
    for method, params in [("tools/list", {}), ("resources/list", {}), ("resources/templates/list", {}),
                           ("prompts/list", {}), ("ping", {}),
                           ("resources/read", {"uri": "tickets+tickets://TCK-1"}),
                           ("resources/read", {"uri": "nowhere+x://y"}),
                           ("prompts/get", {"name": "tickets__summarise_ticket", "arguments": {"ticket_id": "TCK-1"}}),
                           ("notifications/cancelled", {"requestId": 99}), ("no/such/method", {})]:
        found.append({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    return found


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.sampled_from(["", "tools/call", "intentgate__begin_task", "tickets__get_ticket", "intentgate/task",
                     "\u202e", "\x00", "\ud800", "é" * 3, "tsk_", "../../etc/passwd", "__", "+", "a+b"]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(max_size=12) | st.sampled_from(["_meta", "name", "arguments", "intentgate/task", "intentgate/step",
                                                "intent_task", "intent_step", "progressToken", "id"]),
        inner, max_size=4),
    max_leaves=12,
)

HUGE = ["x" * 10_000, "é" * 3_000, ["a"] * 2_000, {f"k{i}": i for i in range(600)}]


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for i in range(depth):
        value = [value] if i % 2 else {"a": value}
    return value


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found.extend(paths(value, (*prefix, key)))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found.extend(paths(value, (*prefix, i)))
    return found


def set_at(doc: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = value
    return doc


def mutated_message(data: st.DataObject, task: str, *, modern: bool = False) -> Any:
    templates = valid_messages(task)
    calls = [t for t in templates if t["method"] == "tools/call"]
    msg = copy.deepcopy(data.draw(st.sampled_from(calls) | st.sampled_from(templates), label="template"))
    msg["id"] = data.draw(st.integers(1, 10**6), label="id")
    if modern and isinstance(msg.get("params"), dict):
        msg["params"]["_meta"] = {**msg["params"].get("_meta", {}), **copy.deepcopy(ENVELOPE)}
    for _ in range(data.draw(st.integers(min_value=0, max_value=3), label="mutations")):
        op = data.draw(st.sampled_from(["name", "arguments", "meta", "big-argument"])
                       | st.sampled_from(["set", "delete", "huge", "deep", "id", "jsonrpc", "batch", "non-object"]),
                       label="op")
        targets = [p for p in paths(msg) if p]
        if op == "set" and targets:
            msg = set_at(msg, data.draw(st.sampled_from(targets), label="path"), data.draw(json_values))
        elif op == "delete" and targets:
            path = data.draw(st.sampled_from(targets), label="path")
            parent = msg
            for part in path[:-1]:
                parent = parent[part]
            del parent[path[-1]]
        elif op in {"name", "arguments", "meta"} and isinstance(msg, dict) and isinstance(msg.get("params"), dict):
            key = {"name": "name", "arguments": "arguments", "meta": "_meta"}[op]
            msg["params"][key] = data.draw(json_values, label=key)
        elif op == "big-argument" and isinstance(msg, dict) and isinstance(msg.get("params"), dict) and isinstance(
                msg["params"].get("arguments"), dict):
            size = data.draw(st.sampled_from([MAX_ARGUMENT_BYTES - 64, MAX_ARGUMENT_BYTES + 1, 40_000]), label="size")
            msg["params"]["arguments"]["blob"] = "x" * size
        elif op == "huge" and targets:
            msg = set_at(msg, data.draw(st.sampled_from(targets), label="path"),
                         copy.deepcopy(data.draw(st.sampled_from(HUGE), label="huge")))
        elif op == "deep" and targets:
            msg = set_at(msg, data.draw(st.sampled_from(targets), label="path"),
                         nested(data.draw(st.sampled_from([10, 100, 400]), label="depth")))
        elif op == "id" and isinstance(msg, dict):
            msg["id"] = data.draw(json_values, label="id value")
        elif op == "jsonrpc" and isinstance(msg, dict):
            msg["jsonrpc"] = data.draw(json_values, label="jsonrpc")
        elif op == "batch":
            msg = [msg] * data.draw(st.integers(0, 3), label="batch size")
        elif op == "non-object":
            msg = data.draw(json_scalars, label="non-object")
    return msg


def encoded(data: st.DataObject, msg: Any) -> bytes:
    """The message as bytes: plain JSON mostly, sometimes not quite JSON or not UTF-8."""
    how = data.draw(st.just("json") | st.sampled_from(["ascii", "truncated", "inserted", "latin-1", "deep-raw"]),
                    label="encoding")
    try:
        text = json.dumps(msg, ensure_ascii=how == "ascii", allow_nan=True)
    except (RecursionError, ValueError):
        text = '{"jsonrpc": "2.0"}'
    raw = text.encode("utf-8", errors="surrogatepass")  # lone surrogates: invalid UTF-8 on the wire
    if how == "truncated" and raw:
        raw = raw[: data.draw(st.integers(0, len(raw) - 1), label="cut")]
    elif how == "inserted":
        at = data.draw(st.integers(0, len(raw)), label="at")
        raw = raw[:at] + data.draw(st.binary(min_size=1, max_size=8), label="bytes") + raw[at:]
    elif how == "latin-1":
        raw = text.encode("latin-1", errors="replace")
    elif how == "deep-raw":
        depth = data.draw(st.sampled_from([1_000, 20_000]), label="depth")
        raw = b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "x", "arguments": {"a": ' + (
            b"[" * depth + b"]" * depth + b"}}}")
    return raw


def sent_id(msg: Any) -> Any:
    if isinstance(msg, dict) and isinstance(msg.get("id"), int | str) and not isinstance(msg.get("id"), bool):
        return msg["id"]
    return None


# ----- Streamable HTTP -----------------------------------------------------------------------


@dataclass
class HttpGateway:
    base: str
    data_dir: Path
    token: str
    log: Path
    session: str = ""
    task: str = ""
    http: httpx2.Client = field(default_factory=lambda: httpx2.Client(timeout=30))

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Accept": ACCEPT, "Content-Type": "application/json",
                **extra}

    def legacy(self) -> dict[str, str]:
        return self.headers(**{"mcp-session-id": self.session, "mcp-protocol-version": HANDSHAKE})

    def post(self, body: bytes, headers: dict[str, str]) -> httpx2.Response:
        return self.http.post(f"{self.base}/mcp", content=body, headers=headers)

    def call(self, name: str, arguments: dict[str, Any], *, modern: bool = False) -> dict[str, Any]:
        """A valid tools/call; its result."""
        params: dict[str, Any] = {"name": name, "arguments": arguments}
        headers = self.legacy()
        if modern:
            params["_meta"] = ENVELOPE
            headers = self.headers(**{"mcp-protocol-version": MODERN, "mcp-method": "tools/call", "mcp-name": name})
        r = self.post(json.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params}).encode(),
                      headers)
        assert r.status_code == 200, r.text
        (msg,) = [m for m in messages_in(r) if "id" in m]
        return msg["result"]

    def assert_healthy(self) -> None:
        assert self.http.get(f"{self.base}/healthz").status_code == 200
        for modern in (False, True):
            result = self.call("intentgate__begin_task",
                               grant_args(self.data_dir, SUPPORT, "refund-order", PARAMS, "still works"), modern=modern)
            assert not result.get("isError") and result["structuredContent"]["task"].startswith("tsk_"), result
        result = self.call("tickets__get_ticket", {"ticket_id": "TCK-1"}, modern=True)
        assert result["structuredContent"]["reasons"] == ["missing_task_context"]


@contextmanager
def http_session(tmp_path: Path, client: str) -> Iterator[HttpGateway]:
    """The configured gateway serving on 127.0.0.1, with one handshake-era session open; at the
    end it must still be running."""
    proc = serve(configure(tmp_path), port := free_port(), tmp_path / "gateway.log")
    gateway = HttpGateway(base=f"http://127.0.0.1:{port}", data_dir=tmp_path, token=agent_token(tmp_path),
                          log=tmp_path / "gateway.log")
    try:
        r = gateway.post(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": HANDSHAKE, "capabilities": {}, "clientInfo": {"name": client, "version": "0"}}}).encode(),
            gateway.headers())
        gateway.session = r.headers["mcp-session-id"]
        assert gateway.post(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}',
                            gateway.legacy()).status_code == 202
        yield gateway
        assert proc.poll() is None, "the gateway exited"
    finally:
        gateway.http.close()
        stop(proc)


def begin(gateway: HttpGateway, why: str) -> str:
    return gateway.call("intentgate__begin_task", grant_args(gateway.data_dir, SUPPORT, "refund-order", PARAMS,
                                                             why))["structuredContent"]["task"]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpGateway]:
    with http_session(tmp_path_factory.mktemp("hostile-http"), "fuzz") as gateway:
        gateway.task = begin(gateway, "fuzz")
        yield gateway


def modern_headers(gw: HttpGateway, msg: Any) -> dict[str, str]:
    """The routing headers a 2026-07-28 client derives from its message (where it can)."""
    extra = {"mcp-protocol-version": MODERN}
    if isinstance(msg, dict):
        method = msg.get("method")
        if isinstance(method, str) and method.isascii() and method.isprintable() and method == method.strip():
            extra["mcp-method"] = method
        params = msg.get("params")
        if isinstance(params, dict):
            name = params.get("name", params.get("uri"))
            if isinstance(name, str):
                extra["mcp-name"] = encode_header_value(name)
    return gw.headers(**extra)


def test_mutated_messages_in_a_session(gw: HttpGateway) -> None:
    logged = gw.log.stat().st_size

    @FUZZ
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        msg = mutated_message(data, gw.task)
        check_http(gw.post(encoded(data, msg), gw.legacy()), sent_id(msg))

    SEEN_CODES.clear()
    fuzz()
    # the mutations reached the front and the decision pipeline, not only the JSON-RPC layer
    assert ReasonCode.UNKNOWN_TOOL in SEEN_CODES and len(SEEN_CODES) >= 5, SEEN_CODES
    gw.assert_healthy()
    assert log_problems(gw.log.read_bytes()[logged:].decode(errors="replace")) == []


def test_mutated_sessionless_requests(gw: HttpGateway) -> None:
    logged = gw.log.stat().st_size

    @FUZZ
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        msg = mutated_message(data, gw.task, modern=True)
        check_http(gw.post(encoded(data, msg), modern_headers(gw, msg)), sent_id(msg))

    fuzz()
    gw.assert_healthy()
    assert log_problems(gw.log.read_bytes()[logged:].decode(errors="replace")) == []


def test_random_bodies_and_headers(gw: HttpGateway) -> None:
    """Bytes that were never a message, under any of the headers a client might send."""
    logged = gw.log.stat().st_size

    @settings(FUZZ, max_examples=120)
    @given(body=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()),
           era=st.sampled_from(["session", "sessionless", "unknown-session", "no-session", "odd-version"]),
           content_type=st.sampled_from(["application/json", "application/json; charset=latin-1", "text/plain",
                                         "application/x-www-form-urlencoded", "", "multipart/form-data; boundary=x"]),
           accept=st.sampled_from([ACCEPT, "application/json", "text/event-stream", "*/*", "text/html", ""]))
    def fuzz(body: bytes, era: str, content_type: str, accept: str) -> None:
        headers = {"session": gw.legacy(), "sessionless": gw.headers(**{"mcp-protocol-version": MODERN}),
                   "unknown-session": gw.headers(**{"mcp-session-id": "0" * 32}), "no-session": gw.headers(),
                   "odd-version": {**gw.headers(), "mcp-protocol-version": b"1999-01-01\xc3\xa9"},
                   }[era]
        headers.update({"Content-Type": content_type, "Accept": accept})
        r = gw.post(body, headers)
        assert r.status_code < 500, (r.status_code, r.text[:300])
        if r.status_code == 406 and era in ("sessionless", "odd-version"):
            # the SDK's entry for 2026-07-28 (and unknown) versions answers a wrong Accept with an
            # empty 406; the status alone says what is wrong
            assert "application/json" not in accept or "text/event-stream" not in accept
            return
        if r.status_code >= 400:
            check_refusal(r)
        elif r.status_code == 200:
            for msg in messages_in(r):
                check_message(msg)

    fuzz()
    gw.assert_healthy()
    assert log_problems(gw.log.read_bytes()[logged:].decode(errors="replace")) == []


@pytest.mark.parametrize("method", ["GET", "DELETE", "PUT", "PATCH"])
@pytest.mark.parametrize("session", ["none", "unknown", "valid-modern"])
def test_other_methods_are_4xx(gw: HttpGateway, method: str, session: str) -> None:
    headers = gw.headers()
    if session == "unknown":
        headers["mcp-session-id"] = "f" * 32
    elif session == "valid-modern":
        headers["mcp-protocol-version"] = MODERN
    r = gw.http.request(method, f"{gw.base}/mcp", headers=headers)
    assert 400 <= r.status_code < 500, (method, session, r.status_code)
    gw.assert_healthy()


# ----- stdio ---------------------------------------------------------------------------------


class StdioGateway:
    """``intentgate stdio`` with raw lines on its stdin; answers read by a thread."""

    def __init__(self, tmp_path: Path) -> None:
        self.data_dir = tmp_path
        params = make_gateway(tmp_path)  # config, keys, and the agent's token in the environment
        cfg = yaml.safe_load((tmp_path / "intentgate.yaml").read_text())
        cfg["front"] = {"max_request_bytes": MAX_REQUEST_BYTES, "max_argument_bytes": MAX_ARGUMENT_BYTES,
                        "rate_limit_per_second": None}
        (tmp_path / "intentgate.yaml").write_text(yaml.safe_dump(cfg))
        self.log = tmp_path / "stdio.log"
        self._err = open(self.log, "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen([params.command, *params.args], cwd=params.cwd, env=params.env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err)
        self.lines: queue.Queue[bytes] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._sync = 0
        self.seen: list[Any] = []

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(b"")  # end of output

    def write(self, line: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.replace(b"\n", b" ") + b"\n")
        self.proc.stdin.flush()

    def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Send one request; return its response, checking every message that arrives before it."""
        self._sync += 1
        rid = f"sync-{self._sync}"
        self.write(json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}).encode())
        deadline = time.monotonic() + 60
        while True:
            line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line, f"the gateway closed its stdout: {self.log.read_text()[-2000:]}"
            msg = json.loads(line)  # every line the gateway writes is JSON
            check_message(msg)
            self.seen.append(msg)
            if isinstance(msg, dict) and msg.get("id") == rid:
                return msg

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=15)
        if self.proc.stdout:
            self.proc.stdout.close()
        self._err.close()


@pytest.fixture(scope="module")
def stdio_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StdioGateway]:
    gateway = StdioGateway(tmp_path_factory.mktemp("hostile-stdio"))
    try:
        init = gateway.request("initialize", {"protocolVersion": HANDSHAKE, "capabilities": {},
                                              "clientInfo": {"name": "fuzz", "version": "0"}})
        assert init["result"]["serverInfo"]["name"] == "intentgate"
        gateway.write(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}')
        yield gateway
    finally:
        gateway.close()


def stdio_begin(gw: StdioGateway) -> str:
    r = gw.request("tools/call", {"name": "intentgate__begin_task",
                                  "arguments": grant_args(gw.data_dir, SUPPORT, "refund-order", PARAMS, "fuzz")})
    assert not r["result"].get("isError"), r
    return r["result"]["structuredContent"]["task"]


def test_mutated_lines_over_stdio(stdio_gw: StdioGateway) -> None:
    task = stdio_begin(stdio_gw)
    logged = stdio_gw.log.stat().st_size

    @FUZZ
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        if data.draw(st.integers(0, 9), label="raw?") == 0:
            line = data.draw(st.binary(max_size=200), label="raw line")
        else:
            line = encoded(data, mutated_message(data, task))
        stdio_gw.write(line)
        assert stdio_gw.request("ping", {})["result"] == {}  # still answering, in order

    fuzz()
    assert stdio_gw.proc.poll() is None
    assert stdio_begin(stdio_gw).startswith("tsk_")  # a valid call still works
    assert any("error" in m for m in stdio_gw.seen) and any(
        m.get("result", {}).get("isError") for m in stdio_gw.seen if isinstance(m.get("result"), dict))
    assert log_problems(stdio_gw.log.read_bytes()[logged:].decode(errors="replace")) == []
