"""Upstream and disk faults end to end: an MCP client -> `intentgate stdio` subprocess ->
misbehaving upstream servers (tests/servers/faulty_server.py), one over stdio and one over
Streamable HTTP on 127.0.0.1.

The upstream crashes mid-call, hangs past its timeout, writes garbage or a malformed
JSON-RPC reply on stdout, answers HTTP 500, an HTML page, or an event stream cut off
mid-message.  Each time the agent gets a tool error naming the decision and
``upstream_error``/``upstream_timeout``, the outcome is recorded, the token is burnt, and
the next call on the same upstream succeeds (a crashed server is restarted on next use).
Separately, the gateway's SQLite database cannot grow mid-run (a file-size limit put on
the running gateway process, as a full disk would): calls are denied ``store_error`` and
nothing reaches the upstream until the limit is lifted.

Every upstream logs what it executed (after verifying the action token itself); the log is
compared with the allow decisions the gateway committed: nothing ran without one.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml
from mcp import Client, StdioServerParameters

from intentgate.identity import DevIssuer
from intentgate.keys import KeySet
from tests.conftest import POLICY_DIR, ROOT

pytestmark = pytest.mark.slow

FAULTY = ROOT / "tests" / "servers" / "faulty_server.py"
AGENT = "spiffe://example.org/agent/support-1"
UPSTREAM_TIMEOUT = 5.0

TICKET = {"ticket_id": {"type": "string"}}
FAULTS_INTENT = {
    "name": "faults",
    "version": "1",
    "agents": ["spiffe://example.org/agent/support-*"],
    "begin": ["agent"],
    "start": ["crash", "hang", "garbage", "bad_reply", "http_500", "html", "truncated_sse", "read", "hread"],
    "steps": {
        **{f: {"tool": f"tickets.{f}", "arguments": TICKET, "next": ["read"]}
           for f in ("crash", "hang", "garbage", "bad_reply")},
        **{f: {"tool": f"helpdesk.{f}", "arguments": TICKET, "next": ["hread"]}
           for f in ("http_500", "html", "truncated_sse")},
        "read": {"tool": "tickets.get_ticket", "arguments": TICKET, "next": ["read", "end"]},
        "hread": {"tool": "helpdesk.get_ticket", "arguments": TICKET, "next": ["hread", "end"]},
        "end": {"tool": "tickets.get_ticket", "arguments": TICKET, "next": []},
    },
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_gateway(tmp_path: Path, upstreams: list[dict[str, Any]]) -> StdioServerParameters:
    intents = tmp_path / "intents"
    intents.mkdir(exist_ok=True)
    (intents / "faults.yaml").write_text(yaml.safe_dump(FAULTS_INTENT))
    cfg = tmp_path / "intentgate.yaml"
    cfg.write_text(yaml.safe_dump({
        "intents_dir": str(intents), "policy_dir": str(POLICY_DIR), "data_dir": str(tmp_path),
        "store": {"timeout_seconds": 1.0}, "upstreams": upstreams,
    }))
    token = DevIssuer(KeySet.open_or_create(tmp_path / "keys" / "agent-issuer")).mint(AGENT)
    return StdioServerParameters(
        command=sys.executable, args=["-m", "intentgate", "stdio", "--config", str(cfg)], cwd=str(ROOT),
        env={**os.environ, "INTENTGATE_AGENT_TOKEN": token},
    )


def upstream_env(tmp_path: Path, name: str) -> dict[str, str]:
    keys = KeySet.open_or_create(tmp_path / "keys" / "action")  # the gateway's action keys
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(keys.jwks()))
    return {"INTENTGATE_JWKS": str(jwks), "EXECUTED": str(tmp_path / f"executed-{name}.jsonl")}


def stdio_upstream(tmp_path: Path, name: str) -> dict[str, Any]:
    return {"name": name, "command": sys.executable, "args": [str(FAULTY), "--name", name],
            "env": upstream_env(tmp_path, name), "timeout_seconds": UPSTREAM_TIMEOUT}


@pytest.fixture
def http_upstream(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The faulty server over Streamable HTTP, as the `helpdesk` upstream."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(FAULTY), "--name", "helpdesk", "--http", str(port)],
        env={**os.environ, **upstream_env(tmp_path, "helpdesk")}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/mcp"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx2.get(url, timeout=2)
            break
        except httpx2.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("the faulty HTTP upstream did not start") from None
            time.sleep(0.1)
    try:
        yield {"name": "helpdesk", "url": url, "timeout_seconds": UPSTREAM_TIMEOUT}
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def executed(tmp_path: Path) -> list[dict[str, str]]:
    lines = []
    for log in sorted(tmp_path.glob("executed-*.jsonl")):
        lines += [json.loads(line) for line in log.read_text().splitlines()]
    return lines


def query(tmp_path: Path, sql: str) -> list[tuple]:
    db = sqlite3.connect(tmp_path / "intentgate.db")
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def assert_nothing_ran_without_an_allow(tmp_path: Path) -> list[dict[str, str]]:
    ran = executed(tmp_path)
    jtis = [r["jti"] for r in ran]
    assert len(jtis) == len(set(jtis))  # no call executed twice
    allowed = {jti for (jti,) in query(tmp_path, "SELECT token_jti FROM decisions "
                                                 "WHERE kind='tools/call' AND outcome='allow'")}
    assert set(jtis) == allowed  # every execution had its committed allow, every allow was forwarded once
    consumed = {jti for (jti,) in query(tmp_path, "SELECT jti FROM tokens WHERE status='consumed'")}
    assert set(jtis) <= consumed  # burnt: none of these tokens can be used again
    return ran


async def begin(client: Client) -> str:
    r = await client.call_tool("intentgate__begin_task", {"intent": "faults", "params": {}, "reason": "chaos"})
    assert not r.is_error, r.content
    return r.structured_content["task"]


async def gated(client: Client, task: str, tool: str, step: str, args: dict | None = None) -> Any:
    return await client.call_tool(tool, args or {"ticket_id": "TCK-1"},
                                  meta={"intentgate/task": task, "intentgate/step": step})


EXPECTED = {  # fault -> (the agent's reason, the recorded outcome)
    "crash": ("upstream_error", "upstream_error"),
    "hang": ("upstream_timeout", "timeout"),
    "garbage": ("upstream_timeout", "timeout"),
    "bad_reply": ("upstream_error", "upstream_error"),
    "http_500": ("upstream_error", "upstream_error"),
    "html": ("upstream_error", "upstream_error"),
    "truncated_sse": ("upstream_error", "upstream_error"),
}


async def test_upstream_faults_fail_clearly_are_recorded_and_recover(
    tmp_path: Path, http_upstream: dict[str, Any]
) -> None:
    params = write_gateway(tmp_path, [stdio_upstream(tmp_path, "tickets"), http_upstream])
    failed: dict[str, str] = {}
    async with Client(params) as client:
        for fault, (reason, _) in EXPECTED.items():
            upstream = "helpdesk" if fault in ("http_500", "html", "truncated_sse") else "tickets"
            task = await begin(client)
            r = await gated(client, task, f"{upstream}__{fault}", fault)
            assert r.is_error, (fault, r.content)
            sc = r.structured_content
            assert sc["reasons"] == [reason], (fault, sc)
            assert sc["decision_id"].startswith("dec_")
            failed[fault] = sc["decision_id"]
            # the next call to the same upstream works (a crashed or broken session is restarted)
            r = await gated(client, task, f"{upstream}__get_ticket", "hread" if upstream == "helpdesk" else "read")
            assert not r.is_error, (fault, r.content)
            assert r.structured_content == {"upstream": upstream, "tool": "get_ticket",
                                            "arguments": {"ticket_id": "TCK-1"}}
    ran = assert_nothing_ran_without_an_allow(tmp_path)
    assert sorted(r["tool"] for r in ran) == sorted([*EXPECTED, *["get_ticket"] * len(EXPECTED)])
    outcomes = dict(query(tmp_path, "SELECT decision_id, status FROM call_outcomes"))
    for fault, decision_id in failed.items():
        assert outcomes[decision_id] == EXPECTED[fault][1], fault
    assert sorted(outcomes.values()).count("ok") == len(EXPECTED)


def gateway_pid(config: Path) -> int:
    """The `intentgate stdio` process the MCP client started for ``config``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(config).encode() in argv and b"stdio" in argv:
            return int(entry.name)
    raise AssertionError("gateway process not found")


@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="needs Linux prlimit")
async def test_database_that_cannot_grow_denies_then_recovers(tmp_path: Path) -> None:
    params = write_gateway(tmp_path, [stdio_upstream(tmp_path, "tickets")])
    async with Client(params) as client:
        task = await begin(client)
        assert not (await gated(client, task, "tickets__get_ticket", "read")).is_error
        pid = gateway_pid(tmp_path / "intentgate.yaml")
        wal = tmp_path / "intentgate.db-wal"
        # the disk is full: no file of the gateway may grow any more (its WAL must, to commit)
        limit = max(wal.stat().st_size, (tmp_path / "intentgate.db").stat().st_size)
        _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, resource.prlimit(pid, resource.RLIMIT_FSIZE)[1]))
        try:
            for _ in range(2):
                r = await gated(client, task, "tickets__get_ticket", "end", {"ticket_id": "TCK-2"})
                assert r.is_error and r.structured_content["reasons"] == ["store_error"], r.content
                assert r.structured_content["outcome"] == "deny"
        finally:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard, hard))  # the soft limit only: no privilege needed
        # the same step (the task did not move) is allowed once the disk has room again
        r = await gated(client, task, "tickets__get_ticket", "end", {"ticket_id": "TCK-3"})
        assert not r.is_error, r.content
        assert r.structured_content["arguments"] == {"ticket_id": "TCK-3"}
    ran = assert_nothing_ran_without_an_allow(tmp_path)
    assert [r["tool"] for r in ran] == ["get_ticket", "get_ticket"]
    # the denials made while the disk was full could not be written; everything else was
    rows = query(tmp_path, "SELECT outcome, arguments FROM decisions WHERE kind='tools/call' ORDER BY seq")
    assert [(o, json.loads(a)["ticket_id"]) for o, a in rows] == [("allow", "TCK-1"), ("allow", "TCK-3")]
