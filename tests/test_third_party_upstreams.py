"""Real third-party MCP servers behind the gateway: `mcp-server-time` (PyPI) and
`@modelcontextprotocol/server-everything` (npm, on the machine's Node.js).  Both are
installed by .ci/run; elsewhere the test skips and says what to install."""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from mcp import Client, MCPError, StdioServerParameters

from gateway.identity import DevIssuer
from gateway.keys import KeySet
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
"""


def missing() -> str | None:
    gone = []
    if not TIME_SERVER:
        gone.append("mcp-server-time (pip install mcp-server-time)")
    if not EVERYTHING.exists() or not shutil.which("node"):
        gone.append("@modelcontextprotocol/server-everything (npm install, needs node)")
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
        command=sys.executable, args=["-m", "gateway", "stdio", "--config", str(cfg)], cwd=str(ROOT),
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
        assert r.is_error and r.structured_content["reasons"] == ["argument_constraint:timezone"]
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
