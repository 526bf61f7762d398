"""Real third-party MCP servers behind the gateway: `mcp-server-time` (PyPI) and
`@modelcontextprotocol/server-everything` (npm, on the machine's Node.js), and a client no one
here wrote: the official TypeScript SDK's (npm `@modelcontextprotocol/sdk`, pinned).  All are
installed by .ci/run; elsewhere the test skips and says what to install."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from mcp import Client, MCPError, StdioServerParameters

from intentgate.identity import DevIssuer
from intentgate.keys import KeySet
from tests.conftest import POLICY_DIR, ROOT

pytestmark = pytest.mark.slow

EVERYTHING = ROOT / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
TIME_SERVER = shutil.which("mcp-server-time", path=str(Path(sys.executable).parent)) or shutil.which("mcp-server-time")
AGENT = "spiffe://example.org/agent/utility-1"

INTENT = """
name: utility-check
version: "1"
description: Look up the time, echo a line, fetch a small image.
agents: ["spiffe://example.org/agent/utility-*"]
begin: [agent]
start: [now]
steps:
  now:
    tool: time.get_current_time
    arguments:
      timezone: {type: string, enum: [Europe/Paris, Etc/UTC]}
    next: [echo]
  echo:
    tool: everything.echo
    arguments:
      message: {type: string, maxLength: 100}
    next: [image]
  image:
    tool: everything.get-tiny-image
  weather:
    tool: everything.get-structured-content   # declares an outputSchema
    free: true
    max_calls: 3
    arguments:
      location: {type: string, enum: [Chicago, New York]}
"""


TS_CLIENT = ROOT / "tests" / "clients" / "ts_client.mjs"
TS_SDK = ROOT / "node_modules" / "@modelcontextprotocol" / "sdk" / "package.json"


def missing() -> str | None:
    gone = []
    if not TIME_SERVER:
        gone.append("mcp-server-time (pip install mcp-server-time)")
    if not EVERYTHING.exists() or not TS_SDK.exists() or not shutil.which("node"):
        gone.append("@modelcontextprotocol/server-everything and sdk (npm ci, needs node)")
    return ", ".join(gone) or None


READS = {"resources": {"everything": ["demo://resource/static/document/features.md",
                                      "demo://resource/dynamic/text/*"]},
         "prompts": {"everything": ["args-prompt"]}}


@pytest.fixture
def gateway(tmp_path: Path) -> StdioServerParameters:
    why = missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"third-party upstreams not installed in CI: {why}")
        pytest.skip(f"third-party upstreams not installed: {why}")
    intents = tmp_path / "intents"
    intents.mkdir()
    (intents / "utility-check.yaml").write_text(textwrap.dedent(INTENT))
    policy = tmp_path / "opa"
    shutil.copytree(POLICY_DIR, policy)
    data = json.loads((policy / "intentgate" / "data.json").read_text())
    (policy / "intentgate" / "data.json").write_text(json.dumps({**data, "reads": READS}))
    cfg = tmp_path / "intentgate.yaml"
    cfg.write_text(yaml.safe_dump({
        "intents_dir": str(intents), "policy_dir": str(policy), "data_dir": str(tmp_path),
        "upstreams": [
            {"name": "time", "command": TIME_SERVER, "timeout_seconds": 20},
            {"name": "everything", "command": shutil.which("node"), "args": [str(EVERYTHING), "stdio"],
             "timeout_seconds": 20},
        ],
    }))
    token = DevIssuer(KeySet.open_or_create(tmp_path / "keys" / "agent-issuer")).mint(AGENT)
    return StdioServerParameters(
        command=sys.executable, args=["-m", "intentgate", "stdio", "--config", str(cfg)], cwd=str(ROOT),
        env={**os.environ, "INTENTGATE_AGENT_TOKEN": token},
    )


async def test_third_party_tools_listed_gated_and_answering(gateway) -> None:
    async with Client(gateway) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"time__get_current_time", "everything__echo", "everything__get-tiny-image"} <= names
        assert "everything__get-env" not in names  # no intent uses it: not offered
        r = await client.call_tool("intentgate__begin_task", {"intent": "utility-check", "params": {},
                                                              "reason": "smoke test"})
        task = r.structured_content["task"]

        def meta(step: str) -> dict:
            return {"intentgate/task": task, "intentgate/step": step}

        r = await client.call_tool("time__get_current_time", {"timezone": "America/New_York"}, meta=meta("now"))
        # the tool declares an outputSchema: the refusal is in _meta and the text, not the structured content
        assert r.is_error and r.structured_content is None
        assert r.meta["intentgate/decision"]["reasons"] == ["argument_constraint:timezone"]
        r = await client.call_tool("time__get_current_time", {"timezone": "Europe/Paris"}, meta=meta("now"))
        assert not r.is_error and '"timezone": "Europe/Paris"' in r.content[0].text
        r = await client.call_tool("everything__get-env", {}, meta=meta("echo"))
        assert r.is_error and "tool_mismatch:everything.get-env" in r.structured_content["reasons"]
        r = await client.call_tool("everything__echo", {"message": "through the gate"}, meta=meta("echo"))
        assert not r.is_error and r.content[0].text == "Echo: through the gate"
        r = await client.call_tool("everything__get-tiny-image", {}, meta=meta("image"))
        assert not r.is_error and any(c.type == "image" for c in r.content)


async def test_third_party_resources_and_prompts_pass_through_the_policy(gateway) -> None:
    async with Client(gateway) as client:
        uris = {r.uri for r in (await client.list_resources()).resources}
        assert "everything+demo://resource/static/document/features.md" in uris
        assert all(u.startswith("everything+") for u in uris)  # mcp-server-time has no resources
        templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
        assert "everything+demo://resource/dynamic/text/{resourceId}" in templates

        doc = await client.read_resource("everything+demo://resource/static/document/features.md")
        assert doc.contents[0].uri == "everything+demo://resource/static/document/features.md"
        assert len(doc.contents[0].text) > 100  # the server's real document
        dynamic = await client.read_resource("everything+demo://resource/dynamic/text/3")
        assert "3" in dynamic.contents[0].text
        with pytest.raises(MCPError) as denied:  # listed by the server, not readable by policy
            await client.read_resource("everything+demo://resource/static/document/architecture.md")
        assert denied.value.data["reasons"] == ["policy_denied", "policy:read_not_permitted"]

        prompts = {p.name for p in (await client.list_prompts()).prompts}
        assert {"everything__simple-prompt", "everything__args-prompt"} <= prompts
        got = await client.get_prompt("everything__args-prompt", {"city": "Lyon", "state": "ARA"})
        assert "Lyon" in got.messages[0].content.text
        with pytest.raises(MCPError) as refused:
            await client.get_prompt("everything__simple-prompt")
        assert refused.value.data["reasons"] == ["policy_denied", "policy:read_not_permitted"]


def ts_client(gateway: StdioServerParameters, calls: list[dict]) -> list[dict]:
    """Run the TypeScript SDK client against the gateway over stdio; one dict per line it printed."""
    config = gateway.args[gateway.args.index("--config") + 1]
    out = subprocess.run(
        [shutil.which("node"), str(TS_CLIENT), json.dumps(calls)], cwd=ROOT, capture_output=True, text=True,
        timeout=180, env={**os.environ, "GATEWAY_PYTHON": sys.executable, "GATEWAY_CONFIG": config,
                          "GATEWAY_ROOT": str(ROOT), "AGENT_TOKEN": gateway.env["INTENTGATE_AGENT_TOKEN"]},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def test_typescript_sdk_client_reads_denials_even_on_tools_with_an_output_schema(gateway) -> None:
    """The TS client validates structuredContent against the tool's outputSchema: a denial in
    the structured content would make it throw instead of showing why."""
    step = {"intentgate/task": "$TASK", "intentgate/step": "weather"}
    listed, begun, denied, allowed, plain_denial = ts_client(gateway, [
        {"name": "intentgate__begin_task", "arguments": {"intent": "utility-check", "params": {}, "reason": "interop"}},
        {"name": "everything__get-structured-content", "arguments": {"location": "Los Angeles"}, "_meta": step},
        {"name": "everything__get-structured-content", "arguments": {"location": "Chicago"}, "_meta": step},
        {"name": "everything__get-tiny-image", "arguments": {},
         "_meta": {"intentgate/task": "$TASK", "intentgate/step": "image"}},
    ])
    assert "everything__get-structured-content" in listed["tools"]
    assert begun["ok"] and begun["structured"]["task"].startswith("tsk_")
    assert denied["ok"], denied  # the client did not throw
    assert denied["isError"] and denied["structured"] is None
    decision = denied["meta"]["intentgate/decision"]
    assert decision["outcome"] == "deny" and decision["reasons"] == ["argument_constraint:location"]
    assert decision["decision_id"] in denied["text"] and "argument_constraint:location" in denied["text"]
    assert allowed["ok"] and not allowed["isError"], allowed
    assert allowed["structured"]["conditions"] == "Light rain / drizzle"  # validated by the client
    assert "io.modelcontextprotocol/serverInfo" not in (allowed["meta"] or {})  # which upstream is not said
    # a tool without an outputSchema keeps the structured refusal as well
    assert plain_denial["isError"] and plain_denial["structured"]["reasons"] == ["step_out_of_order:image"]
    assert plain_denial["meta"]["intentgate/decision"] == plain_denial["structured"]
    assert "allowed next: now, weather" in plain_denial["text"]
