"""Request size limits, over real transports: refused clearly, recorded, and the gateway goes on.

- HTTP: a body over ``front.max_request_bytes`` gets 413 whether or not it declares its
  length, in a session or not (``tests/test_front_http.py`` has the plain case);
- HTTP and stdio: tool arguments over ``front.max_argument_bytes`` are a tool error
  ``payload_too_large:<bytes>``, recorded as a denied ``tools/call`` without the arguments;
  so are oversized arguments to the gateway's own tools;
- stdio: a line far over the HTTP limit (the stdio transport reads whole lines) is answered
  the same way when it is a call, ignored when it is not JSON, and the gateway answers on.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.tasks import grant_args
from tests.test_front_stdio import PARAMS, SUPPORT
from tests.test_hostile_jsonrpc import (
    ENVELOPE,
    HANDSHAKE,
    MAX_ARGUMENT_BYTES,
    MAX_REQUEST_BYTES,
    MODERN,
    HttpGateway,
    StdioGateway,
    begin,
    check_http,
    http_session,
    messages_in,
)

pytestmark = pytest.mark.slow


def decisions(data_dir: Path, decision_id: str) -> dict[str, Any]:
    db = sqlite3.connect(data_dir / "intentgate.db")
    try:
        row = db.execute("SELECT kind, outcome, reasons, arguments, masked, upstream, tool FROM decisions WHERE id = ?",
                         (decision_id,)).fetchone()
    finally:
        db.close()
    assert row is not None, f"decision {decision_id} was not recorded"
    kind, outcome, reasons, arguments, masked, upstream, tool = row
    return {"kind": kind, "outcome": outcome, "reasons": json.loads(reasons),
            "arguments": json.loads(arguments) if arguments else None, "masked": json.loads(masked or "null"),
            "upstream": upstream, "tool": tool}


def assert_too_large_and_recorded(data_dir: Path, result: dict[str, Any], tool: str) -> None:
    assert result["isError"], result
    sc = result["structuredContent"]
    assert sc["outcome"] == "deny" and len(sc["reasons"]) == 1, sc
    code, _, size = sc["reasons"][0].partition(":")
    assert code == "payload_too_large" and int(size) > MAX_ARGUMENT_BYTES, sc
    record = decisions(data_dir, sc["decision_id"])
    assert record["kind"] == "tools/call" and record["outcome"] == "deny", record
    assert record["reasons"] == sc["reasons"] and record["tool"] == tool, record
    assert record["arguments"] is None and record["masked"] == ["/arguments"], record  # never stored


# ----- HTTP ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpGateway]:
    with http_session(tmp_path_factory.mktemp("limits-http"), "limits") as gateway:
        gateway.task = begin(gateway, "limits")
        yield gateway


def tools_call(name: str, arguments: Any, *, meta: dict[str, Any] | None = None, rid: int = 5) -> bytes:
    params: dict[str, Any] = {"name": name, "arguments": arguments}
    if meta is not None:
        params["_meta"] = meta
    return json.dumps({"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}).encode()


@pytest.mark.parametrize("era", ["session", "sessionless", "new-session"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_oversized_body_is_413_however_it_is_framed(gw: HttpGateway, era: str, framing: str) -> None:
    body = tools_call("tickets__get_ticket", {"ticket_id": "x" * (MAX_REQUEST_BYTES + 1)},
                      meta={"intentgate/task": gw.task, "intentgate/step": "read_ticket"} | (
                          ENVELOPE if era == "sessionless" else {}))
    headers = {"session": gw.legacy(), "new-session": gw.headers(),
               "sessionless": gw.headers(**{"mcp-protocol-version": MODERN, "mcp-method": "tools/call",
                                            "mcp-name": "tickets__get_ticket"})}[era]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold on what actually arrives
        for i in range(0, len(body), 8192):
            yield body[i:i + 8192]

    r = gw.http.post(f"{gw.base}/mcp", content=body if framing == "content-length" else chunks(), headers=headers)
    assert r.status_code == 413, (r.status_code, r.text[:300])
    assert "too large" in r.text.lower()
    gw.assert_healthy()


def test_body_just_under_the_limit_is_served(gw: HttpGateway) -> None:
    arguments = {"ticket_id": "TCK-1", "note": "y" * (MAX_REQUEST_BYTES - 2_000)}
    r = gw.post(tools_call("tickets__get_ticket", arguments,
                           meta={"intentgate/task": gw.task, "intentgate/step": "read_ticket"}), gw.legacy())
    check_http(r, 5)
    (msg,) = messages_in(r)
    assert_too_large_and_recorded(gw.data_dir, msg["result"], "tickets.get_ticket")  # arguments, not the body


@pytest.mark.parametrize("modern", [False, True])
def test_oversized_arguments_are_refused_and_recorded(gw: HttpGateway, modern: bool) -> None:
    for arguments in ({"ticket_id": "x" * MAX_ARGUMENT_BYTES},
                      {"ticket_id": "TCK-1", **{f"k{i}": i for i in range(MAX_ARGUMENT_BYTES // 8)}},
                      {"ticket_id": ["é" * 100] * (MAX_ARGUMENT_BYTES // 100)}):
        arguments = {**arguments, "intent_task": gw.task, "intent_step": "read_ticket"}
        assert_too_large_and_recorded(gw.data_dir, gw.call("tickets__get_ticket", arguments, modern=modern),
                                      "tickets.get_ticket")
    # just under the limit: decided on its merits
    result = gw.call("tickets__get_ticket", {"ticket_id": "x" * (MAX_ARGUMENT_BYTES - 100), "intent_task": gw.task,
                                             "intent_step": "read_ticket"}, modern=modern)
    assert "payload_too_large" not in json.dumps(result["structuredContent"])
    gw.assert_healthy()


@pytest.mark.parametrize(("name", "arguments"), [
    ("intentgate__begin_task", {"intent": "refund-order", "params": {**PARAMS, "pad": "p" * MAX_ARGUMENT_BYTES},
                                "reason": "big"}),
    ("intentgate__begin_task", {"intent": "refund-order", "params": PARAMS, "reason": "r" * MAX_ARGUMENT_BYTES}),
    ("intentgate__end_task", {"task": "t" * MAX_ARGUMENT_BYTES}),
    ("intentgate__list_intents", {"pad": ["z"] * MAX_ARGUMENT_BYTES}),
])
def test_oversized_arguments_to_the_gateways_own_tools(gw: HttpGateway, name: str, arguments: dict) -> None:
    assert_too_large_and_recorded(gw.data_dir, gw.call(name, arguments), name.replace("__", ".", 1))
    gw.assert_healthy()


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", str(2**64)])
@pytest.mark.parametrize("where", ["params", "reason", "intent"])
def test_gateway_tool_arguments_that_are_not_canonical_json(gw: HttpGateway, value: str, where: str) -> None:
    """Regression: NaN in the task parameters reached the hash-chained log and failed as an
    internal error; now a recorded ``malformed_request:arguments``, like any tool call's."""
    arguments = {"intent": "refund-order", "params": PARAMS, "reason": "not json"}
    arguments[where] = {"order_id": "__VALUE__"} if where == "params" else "__VALUE__"
    body = json.dumps({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                       "params": {"name": "intentgate__begin_task", "arguments": arguments}})
    r = gw.post(body.replace('"__VALUE__"', value).encode(), gw.legacy())  # what json.dumps will not write
    check_http(r, 9)
    (msg,) = messages_in(r)
    sc = msg["result"]["structuredContent"]
    assert msg["result"]["isError"] and sc["reasons"] == ["malformed_request:arguments"], sc
    record = decisions(gw.data_dir, sc["decision_id"])
    assert record["tool"] == "intentgate.begin_task" and record["outcome"] == "deny", record
    assert record["arguments"] is None and record["masked"] == ["/arguments"], record
    gw.assert_healthy()


# ----- stdio ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stdio_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StdioGateway]:
    gateway = StdioGateway(tmp_path_factory.mktemp("limits-stdio"))
    try:
        gateway.request("initialize", {"protocolVersion": HANDSHAKE, "capabilities": {},
                                       "clientInfo": {"name": "limits", "version": "0"}})
        gateway.write(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}')
        yield gateway
    finally:
        gateway.close()


def stdio_task(gw: StdioGateway) -> str:
    r = gw.request("tools/call", {"name": "intentgate__begin_task",
                                  "arguments": grant_args(gw.data_dir, SUPPORT, "refund-order", PARAMS, "limits")})
    return r["result"]["structuredContent"]["task"]


@pytest.mark.parametrize("size", [MAX_ARGUMENT_BYTES + 1, MAX_REQUEST_BYTES * 4, 2_000_000])
def test_oversized_arguments_over_stdio_are_refused_and_recorded(stdio_gw: StdioGateway, size: int) -> None:
    """Up to a 2 MB line: the arguments limit answers, the line is not a problem by itself."""
    task = stdio_task(stdio_gw)
    r = stdio_gw.request("tools/call", {"name": "tickets__get_ticket", "arguments": {"ticket_id": "x" * size},
                                        "_meta": {"intentgate/task": task, "intentgate/step": "read_ticket"}})
    assert_too_large_and_recorded(stdio_gw.log.parent, r["result"], "tickets.get_ticket")
    assert stdio_gw.request("ping", {})["result"] == {}
    # and the task goes on: a valid call for the same step is allowed
    r = stdio_gw.request("tools/call", {"name": "tickets__get_ticket", "arguments": {"ticket_id": "TCK-1"},
                                        "_meta": {"intentgate/task": task, "intentgate/step": "read_ticket"}})
    assert not r["result"].get("isError") and r["result"]["structuredContent"]["verified_jti"], r


@pytest.mark.parametrize("line", [b"x" * 3_000_000, b"[" * 500_000, b'{"jsonrpc": "2.0", "id": 1, "method": "'
                                  + b"m" * 2_000_000 + b'"}', b"\xff" * 1_000_000])
def test_huge_lines_that_are_not_calls_leave_stdio_serving(stdio_gw: StdioGateway, line: bytes) -> None:
    stdio_gw.write(line)
    assert stdio_gw.request("ping", {})["result"] == {}
    assert stdio_task(stdio_gw).startswith("tsk_")
    assert stdio_gw.proc.poll() is None
