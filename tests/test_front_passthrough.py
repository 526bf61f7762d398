"""Passthrough beyond tools/call: an HTTP upstream (action token as bearer, configured headers),
progress and log notifications relayed to the calling agent, and resources and prompts of
the upstreams, namespaced and gated by the Rego policy.

Real processes throughout: `intentgate stdio` as a subprocess, the test tool server as a stdio
subprocess and as a Streamable HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import mcp_types as types
import pytest
import yaml
from mcp import Client, MCPError, StdioServerParameters

from intentgate.passthrough import READ_DENIED
from intentgate.identity import DevIssuer
from intentgate.keys import KeySet
from tests.conftest import INTENTS_DIR, POLICY_DIR, ROOT
from tests.processes import free_port
from tests.test_front_stdio import PARAMS, SERVER, SUPPORT
from tests.tasks import grant_args

pytestmark = pytest.mark.slow

API_KEY = "orders-api-key-not-for-agents"


@pytest.fixture(scope="module")
def http_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The `orders` test server over Streamable HTTP, verifying tokens of one action key set."""
    keys_dir = tmp_path_factory.mktemp("action-keys")
    keys = KeySet.open_or_create(keys_dir / "action")
    jwks = keys_dir / "jwks.json"
    jwks.write_text(json.dumps(keys.jwks()))
    port = free_port()
    log = keys_dir / "server.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(SERVER), "--name", "orders", "--http", str(port)],
            cwd=ROOT, env={**os.environ, "INTENTGATE_JWKS": str(jwks), "CAPTURE_TOKENS": str(keys_dir / "sniffed")},
            stdout=subprocess.DEVNULL, stderr=err,
        )
    url = f"http://127.0.0.1:{port}/mcp"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx2.get(url, timeout=1)
            break
        except httpx2.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise RuntimeError(f"test server did not start: {log.read_text()[-2000:]}") from None
            time.sleep(0.1)
    try:
        yield url, keys_dir / "action"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def gateway(tmp_path: Path, http_upstream: tuple[str, Path], *, agent: str = SUPPORT,
            orders_headers: dict[str, str] | None = None) -> StdioServerParameters:
    """`intentgate stdio` fronting `tickets` (stdio) and `orders` (HTTP), sharing the action keys."""
    url, action_keys = http_upstream
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "action").symlink_to(action_keys)
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(KeySet.open_or_create(action_keys).jwks()))
    cfg = tmp_path / "intentgate.yaml"
    cfg.write_text(yaml.safe_dump({
        "intents_dir": str(INTENTS_DIR), "policy_dir": str(POLICY_DIR), "data_dir": str(tmp_path),
        "upstreams": [
            {"name": "tickets", "command": sys.executable, "args": [str(SERVER), "--name", "tickets"],
             "env": {"INTENTGATE_JWKS": str(jwks)}},
            {"name": "orders", "url": url,
             "headers": orders_headers if orders_headers is not None else {"X-Api-Key": "${IG_TEST_ORDERS_KEY}"}},
        ],
    }))
    token = DevIssuer(KeySet.open_or_create(tmp_path / "keys" / "agent-issuer")).mint(agent)
    return StdioServerParameters(
        command=sys.executable, args=["-m", "intentgate", "stdio", "--config", str(cfg)], cwd=str(ROOT),
        env={**os.environ, "INTENTGATE_AGENT_TOKEN": token, "IG_TEST_ORDERS_KEY": API_KEY,
             "IG_TEST_ORDERS_AUTH": "Bearer brokered-credential"},
    )


def decisions(tmp_path: Path, kind: str) -> list[tuple[str, str, list[str]]]:
    db = sqlite3.connect(tmp_path / "intentgate.db")
    rows = db.execute("SELECT tool, outcome, reasons FROM decisions WHERE kind=? ORDER BY seq", (kind,)).fetchall()
    db.close()
    return [(t, o, json.loads(r)) for t, o, r in rows]


async def begin(client: Client, data_dir: Path) -> str:
    r = await client.call_tool("intentgate__begin_task", grant_args(data_dir, SUPPORT, "refund-order", PARAMS))
    assert not r.is_error, r.content
    return r.structured_content["task"]


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_http_upstream_progress_and_logs(tmp_path: Path, http_upstream, mode: str) -> None:
    logs: list[types.LoggingMessageNotificationParams] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params)

    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    async with Client(gateway(tmp_path, http_upstream), mode=mode, logging_callback=on_log,
                      log_level="info" if mode == "auto" else None) as client:
        task = await begin(client, tmp_path)
        meta = {"intentgate/task": task}
        r = await client.call_tool("tickets__get_ticket", {"ticket_id": "TCK-1"},
                                   meta={**meta, "intentgate/step": "read_ticket"})
        assert not r.is_error
        assert r.structured_content["has_authorization"] is False  # stdio: no HTTP headers
        r = await client.call_tool("orders__get_order", {"order_id": "ORD-7"}, progress_callback=on_progress,
                                   meta={**meta, "intentgate/step": "lookup"})
        assert not r.is_error, r.content
        echo = r.structured_content
        # the HTTP upstream got the call's own action token as bearer, verified and burnt it
        assert echo["bearer_is_token"] is True and echo["verified_jti"]
        # and the configured (brokered) header, which the agent never sees
        assert echo["x_api_key_sha256"] == hashlib.sha256(API_KEY.encode()).hexdigest()
        assert API_KEY not in json.dumps(echo)
    assert progress == [(1, 2, "half way"), (2, 2, "done")]
    assert [(m.level, m.data, m.logger) for m in logs] == [
        ("info", "served get_ticket", "tickets"), ("info", "served get_order", "orders")
    ]
    assert [o for _, o, _ in decisions(tmp_path, "tools/call")] == ["allow", "allow"]


async def test_no_log_lines_without_opt_in_on_modern_sessions(tmp_path: Path, http_upstream) -> None:
    logs: list[Any] = []

    async def on_log(params: Any) -> None:
        logs.append(params)

    async with Client(gateway(tmp_path, http_upstream), logging_callback=on_log) as client:
        task = await begin(client, tmp_path)
        r = await client.call_tool("tickets__get_ticket", {"ticket_id": "TCK-1"},
                                   meta={"intentgate/task": task, "intentgate/step": "read_ticket"})
        assert not r.is_error
    assert logs == []


async def test_brokered_authorization_header_wins_over_the_token(tmp_path: Path, http_upstream) -> None:
    params = gateway(tmp_path, http_upstream, orders_headers={"Authorization": "${IG_TEST_ORDERS_AUTH}"})
    async with Client(params) as client:
        task = await begin(client, tmp_path)
        meta = {"intentgate/task": task}
        await client.call_tool("tickets__get_ticket", {"ticket_id": "TCK-1"}, meta={**meta, "intentgate/step": "read_ticket"})
        r = await client.call_tool("orders__get_order", {"order_id": "ORD-7"}, meta={**meta, "intentgate/step": "lookup"})
        assert not r.is_error, r.content
        # the configured credential went as Authorization; the token still travelled in _meta
        assert r.structured_content["has_authorization"] and not r.structured_content["bearer_is_token"]
        assert r.structured_content["verified_jti"]


async def test_resources_and_prompts_are_namespaced_and_gated(tmp_path: Path, http_upstream) -> None:
    async with Client(gateway(tmp_path, http_upstream)) as client:
        uris = {r.uri for r in (await client.list_resources()).resources}
        # only the tickets server has resources; the orders server declares none
        assert uris == {"tickets+tickets://TCK-1", "tickets+tickets://TCK-2", "tickets+tickets://customers/all"}
        templates = (await client.list_resource_templates()).resource_templates
        assert [(t.uri_template, t.name) for t in templates] == [("tickets+tickets://{ticket_id}", "tickets__ticket")]

        read = await client.read_resource("tickets+tickets://TCK-2")
        assert [(c.uri, c.text) for c in read.contents] == [("tickets+tickets://TCK-2", "Where is my parcel?")]

        # listed by the upstream, but not readable by policy: refused, the data never leaves
        with pytest.raises(MCPError) as denied:
            await client.read_resource("tickets+tickets://customers/all")
        assert denied.value.code == READ_DENIED
        assert denied.value.data["reasons"] == ["policy_denied", "policy:read_not_permitted"]
        assert denied.value.data["decision_id"].startswith("dec_")
        assert "alice@example.com" not in json.dumps(denied.value.data)

        with pytest.raises(MCPError) as unknown:
            await client.read_resource("nowhere+tickets://TCK-1")
        assert unknown.value.data["reasons"] == ["unknown_resource:tickets://TCK-1"]
        with pytest.raises(MCPError) as bare:
            await client.read_resource("tickets://TCK-1")  # not namespaced: names no upstream
        assert bare.value.data["reasons"] == ["unknown_resource:tickets://TCK-1"]

        prompts = (await client.list_prompts()).prompts
        assert [p.name for p in prompts] == ["tickets__summarise_ticket"]
        got = await client.get_prompt("tickets__summarise_ticket", {"ticket_id": "TCK-1"})
        assert got.messages[0].content.text == "Summarise TCK-1: Order ORD-7 arrived broken."
        with pytest.raises(MCPError) as no_prompt:
            await client.get_prompt("summarise_ticket", {"ticket_id": "TCK-1"})
        assert no_prompt.value.data["reasons"] == ["unknown_prompt:summarise_ticket"]

    assert decisions(tmp_path, "resources/read") == [
        ("tickets://TCK-2", "allow", []),
        ("tickets://customers/all", "deny", ["policy_denied", "policy:read_not_permitted"]),
        ("tickets://TCK-1", "deny", ["unknown_resource:tickets://TCK-1"]),
        ("tickets://TCK-1", "deny", ["unknown_resource:tickets://TCK-1"]),
    ]
    assert decisions(tmp_path, "prompts/get") == [
        ("summarise_ticket", "allow", []),
        ("summarise_ticket", "deny", ["unknown_prompt:summarise_ticket"]),
    ]


async def test_agent_without_an_intent_on_the_upstream_sees_and_reads_nothing(tmp_path: Path, http_upstream) -> None:
    async with Client(gateway(tmp_path, http_upstream, agent="spiffe://example.org/agent/ops-1")) as client:
        assert (await client.list_resources()).resources == []
        assert (await client.list_prompts()).prompts == []
        with pytest.raises(MCPError) as denied:
            await client.read_resource("tickets+tickets://TCK-1")
        assert denied.value.data["reasons"] == ["policy_denied", "policy:read_not_permitted"]


async def test_sniffed_token_replayed_at_the_upstream_is_refused(tmp_path: Path, http_upstream) -> None:
    url, action_keys = http_upstream
    sniffed = action_keys.parent / "sniffed"
    async with Client(gateway(tmp_path, http_upstream)) as client:
        task = await begin(client, tmp_path)
        meta = {"intentgate/task": task}
        await client.call_tool("tickets__get_ticket", {"ticket_id": "TCK-1"}, meta={**meta, "intentgate/step": "read_ticket"})
        before = sniffed.read_text().split() if sniffed.exists() else []
        # a token the agent puts in _meta itself is dropped: the upstream gets the gateway's own
        r = await client.call_tool("orders__get_order", {"order_id": "ORD-7"},
                                   meta={**meta, "intentgate/step": "lookup", "intentgate/token": "stolen"})
        assert not r.is_error and r.structured_content["verified_jti"]
    captured = sniffed.read_text().split()[len(before):]
    assert len(captured) == 1 and captured[0] != "stolen"
    # whoever saw the token on the wire replays it straight at the upstream: burnt already
    async with Client(url) as direct:
        replay = await direct.call_tool("get_order", {"order_id": "ORD-7"}, meta={"intentgate/token": captured[0]})
    assert replay.is_error and replay.structured_content == {"refused": "token_replayed"}
