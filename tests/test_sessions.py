"""MCP sessions on the HTTP front belong to their agent, and no agent can use up the
sessions of the others; Host and Origin are checked (DNS rebinding).  `intentgate serve`
as a subprocess on 127.0.0.1, spoken to in raw Streamable HTTP (the 2025 handshake that
opens a session), with real workload tokens."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml

from tests.processes import free_port, serve, stop
from tests.test_front_http import agent_token
from tests.test_front_stdio import SUPPORT, make_gateway

pytestmark = pytest.mark.slow

OTHER = "spiffe://example.org/agent/support-2"
THIRD = "spiffe://example.org/agent/support-3"
VERSION = "2025-06-18"
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
FRONT = {"max_sessions_per_agent": 3, "session_starts_per_minute": 1000, "allowed_hosts": [
    "127.0.0.1:*", "gateway.example.com"]}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    tmp_path = tmp_path_factory.mktemp("sessions")
    make_gateway(tmp_path)
    cfg = tmp_path / "intentgate.yaml"
    cfg.write_text(yaml.safe_dump({**yaml.safe_load(cfg.read_text()), "front": FRONT}))
    proc = serve(cfg, port := free_port(), tmp_path / "gateway.log")
    try:
        yield f"http://127.0.0.1:{port}/mcp", tmp_path
    finally:
        stop(proc)


def message(response: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC message of a response (plain JSON or the data of its SSE event)."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
        return json.loads(data[-1])
    return response.json()


def rpc(url: str, token: str, method: str, params: dict | None = None, *, session: str | None = None,
        id: int = 1, extra: dict[str, str] | None = None) -> httpx2.Response:
    headers = {**HEADERS, "Authorization": f"Bearer {token}", **(extra or {})}
    if session:
        headers |= {"Mcp-Session-Id": session, "MCP-Protocol-Version": VERSION}
    body = {"jsonrpc": "2.0", "id": id, "method": method, **({"params": params} if params is not None else {})}
    return httpx2.post(url, headers=headers, json=body, timeout=30)


def open_session(url: str, token: str) -> str:
    r = rpc(url, token, "initialize", {"protocolVersion": VERSION, "capabilities": {},
                                      "clientInfo": {"name": "test", "version": "1"}})
    assert r.status_code == 200, r.text
    session = r.headers["mcp-session-id"]
    headers = {**HEADERS, "Authorization": f"Bearer {token}", "Mcp-Session-Id": session,
               "MCP-Protocol-Version": VERSION}
    note = httpx2.post(url, headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert note.status_code == 202, note.text
    return session


def close_session(url: str, token: str, session: str) -> int:
    headers = {"Authorization": f"Bearer {token}", "Mcp-Session-Id": session, "MCP-Protocol-Version": VERSION}
    return httpx2.delete(url, headers=headers, timeout=30).status_code


def refusals(data_dir: Path) -> list[tuple[str, list[str]]]:
    db = sqlite3.connect(data_dir / "intentgate.db")
    rows = db.execute("SELECT agent, reasons FROM decisions WHERE kind='mcp/session' ORDER BY seq").fetchall()
    db.close()
    return [(a, json.loads(r)) for a, r in rows]


def test_another_agent_cannot_use_end_or_read_a_session(gateway) -> None:
    url, data_dir = gateway
    a, b = agent_token(data_dir, SUPPORT), agent_token(data_dir, OTHER)
    session = open_session(url, a)
    before = len(refusals(data_dir))
    listed = rpc(url, a, "tools/list", {}, session=session, id=7)
    assert listed.status_code == 200 and message(listed)["result"]["tools"]

    # B, with its own valid token and A's session id: as if the session did not exist
    for method in ("tools/list", "tools/call"):
        r = rpc(url, b, method, {} if method == "tools/list" else {"name": "tickets__get_ticket", "arguments": {}},
                session=session, id=7)
        assert r.status_code == 404, (method, r.status_code, r.text)
        assert "tools" not in r.text
    cancel = rpc(url, b, "notifications/cancelled", {"requestId": 7}, session=session)
    assert cancel.status_code == 404
    assert close_session(url, b, session) == 404

    # A's session is untouched and still A's
    again = rpc(url, a, "tools/list", {}, session=session, id=8)
    assert again.status_code == 200 and message(again)["result"]["tools"]
    found = refusals(data_dir)[before:]
    assert len(found) == 4 and {agent for agent, _ in found} == {OTHER}
    assert all(reasons[0].startswith("session_not_owned") for _, reasons in found)
    assert close_session(url, a, session) == 200


def test_one_agent_cannot_use_up_the_sessions_of_the_others(gateway) -> None:
    url, data_dir = gateway
    a, c = agent_token(data_dir, SUPPORT), agent_token(data_dir, THIRD)
    mine = [open_session(url, a) for _ in range(FRONT["max_sessions_per_agent"])]
    refused = rpc(url, a, "initialize", {"protocolVersion": VERSION, "capabilities": {},
                                        "clientInfo": {"name": "flood", "version": "1"}})
    assert refused.status_code == 429 and refused.headers["retry-after"] == "60"
    error = refused.json()["error"]
    assert error["data"]["reasons"] == ["session_limit:3 sessions open"] and error["data"]["decision_id"]
    assert refusals(data_dir)[-1] == (SUPPORT, ["session_limit:3 sessions open"])

    theirs = open_session(url, c)  # another agent is not affected
    assert close_session(url, c, theirs) == 200
    assert close_session(url, a, mine[0]) == 200  # a closed session no longer counts
    mine[0] = open_session(url, a)
    for session in mine:
        assert close_session(url, a, session) == 200


def test_host_and_origin_are_checked_before_anything_else(gateway) -> None:
    url, data_dir = gateway
    token = agent_token(data_dir, SUPPORT)
    init = {"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    evil_host = rpc(url, token, "initialize", init, extra={"Host": "evil.example.com"})
    assert evil_host.status_code == 421 and "mcp-session-id" not in evil_host.headers
    no_token = httpx2.post(url, headers={**HEADERS, "Host": "evil.example.com"}, json={}, timeout=30)
    assert no_token.status_code == 421  # refused before the token is even looked at
    evil_origin = rpc(url, token, "initialize", init, extra={"Origin": "http://evil.example.com"})
    assert evil_origin.status_code == 403
    allowed = rpc(url, token, "initialize", init, extra={"Host": "gateway.example.com"})
    assert allowed.status_code == 200  # a configured name
    assert close_session(url, token, allowed.headers["mcp-session-id"]) == 200
    local = rpc(url, token, "initialize", init, extra={"Origin": f"http://127.0.0.1:{url.split(':')[2].split('/')[0]}"})
    assert local.status_code == 200
    assert close_session(url, token, local.headers["mcp-session-id"]) == 200


def test_sessions_opened_too_fast_are_refused(tmp_path: Path) -> None:
    make_gateway(tmp_path)
    cfg = tmp_path / "intentgate.yaml"
    cfg.write_text(yaml.safe_dump({**yaml.safe_load(cfg.read_text()),
                                   "front": {"session_starts_per_minute": 2, "max_sessions_per_agent": 100}}))
    proc = serve(cfg, port := free_port(), tmp_path / "gateway.log")
    try:
        url = f"http://127.0.0.1:{port}/mcp"
        a, b = agent_token(tmp_path, SUPPORT), agent_token(tmp_path, OTHER)
        first = [open_session(url, a) for _ in range(2)]
        init = {"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
        third = rpc(url, a, "initialize", init)
        assert third.status_code == 429
        assert third.json()["error"]["data"]["reasons"] == ["session_limit:sessions opened too fast"]
        assert open_session(url, b)  # another agent's own bucket
        for session in first:
            assert close_session(url, a, session) == 200
    finally:
        stop(proc)


def resume(url: str, token: str, session: str, last_event_id: str, until: str) -> list[str]:
    """GET the session's stream from ``last_event_id`` on; the lines up to one containing ``until``
    (or all that came within a few seconds)."""
    headers = {"Accept": "text/event-stream", "Authorization": f"Bearer {token}", "Mcp-Session-Id": session,
               "MCP-Protocol-Version": "2025-11-25", "Last-Event-ID": last_event_id}
    lines: list[str] = []
    try:
        with httpx2.stream("GET", url, headers=headers, timeout=3) as stream:
            assert stream.status_code == 200
            for line in stream.iter_lines():
                lines.append(line)
                if until in line:
                    break
    except httpx2.ReadTimeout:
        pass
    return lines


def test_a_session_resumes_its_own_stream_and_never_another_sessions(gateway) -> None:
    url, data_dir = gateway
    mine, theirs = agent_token(data_dir, THIRD), agent_token(data_dir, OTHER)

    def session(token: str) -> str:
        r = rpc(url, token, "initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                          "clientInfo": {"name": "test", "version": "1"}})
        sid = r.headers["mcp-session-id"]
        headers = {**HEADERS, "Authorization": f"Bearer {token}", "Mcp-Session-Id": sid,
                   "MCP-Protocol-Version": "2025-11-25"}
        httpx2.post(url, headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        return sid

    a, b = session(mine), session(theirs)
    r = httpx2.post(url, headers={**HEADERS, "Authorization": f"Bearer {mine}", "Mcp-Session-Id": a,
                                  "MCP-Protocol-Version": "2025-11-25"},
                    json={"jsonrpc": "2.0", "id": 7, "method": "tools/list"}, timeout=30)
    events = [line[3:].strip() for line in r.text.splitlines() if line.startswith("id:")]
    assert len(events) == 2 and len(set(events)) == 2  # a priming event, then the result, each with an id
    # the client lost the stream after the priming event: it resumes and gets the result again
    replayed = resume(url, mine, a, events[0], until='"id":7')
    assert f"id: {events[1]}" in replayed and any('"id":7' in line and "intentgate__begin_task" in line
                                                   for line in replayed)
    # another agent's session, given that event id, replays nothing of it
    assert not any("intentgate__begin_task" in line for line in resume(url, theirs, b, events[0], until='"id":7'))
