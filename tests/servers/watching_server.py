"""An upstream MCP server on the 2026-07-28 protocol whose changes reach clients only through
``subscriptions/listen``, for the tests of the gateway's listen streams.

Written with the SDK's low-level server and its ``ListenHandler`` over an in-process bus;
``python watching_server.py`` serves over stdio, ``--http PORT`` over Streamable HTTP on
127.0.0.1.  Resources ``watch://counter`` and ``watch://quiet`` (their text: how often each was
touched).  Tools:
  - ``touch {uri}`` counts a touch of that resource and publishes ``ResourceUpdated(uri)``;
  - ``grow`` adds a tool ``grown`` and publishes ``ToolsListChanged``;
  - ``listens`` returns how many listen streams are open and the resource URIs each asked for.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import anyio
import mcp_types as types
from mcp import MCPError
from mcp.server.lowlevel import Server
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler
from mcp.shared.subscriptions import ResourceUpdated, ToolsListChanged

from _serving import serve  # this directory (run as a script)

BUS = InMemorySubscriptionBus()
TOUCHED = {"watch://counter": 0, "watch://quiet": 0}
TOOLS = ["touch", "grow", "listens"]
OPEN: list[list[str]] = []  # the resource URIs of each open listen stream


class CountingListen(ListenHandler):
    """The SDK's handler, counting the streams it serves (the tests check the gateway opens few)."""

    async def __call__(self, ctx: Any, params: types.SubscriptionsListenRequestParams) -> Any:
        uris = list(params.notifications.resource_subscriptions or [])
        OPEN.append(uris)
        try:
            return await super().__call__(ctx, params)
        finally:
            OPEN.remove(uris)


def text(value: Any) -> list[types.TextContent]:
    return [types.TextContent(type="text", text=json.dumps(value))]


async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
    return types.ListToolsResult(tools=[
        types.Tool(name=n, input_schema={"type": "object", "properties": {"uri": {"type": "string"}}}
                   if n == "touch" else {"type": "object"}) for n in TOOLS])


async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
    args = params.arguments or {}
    if params.name == "touch":
        uri = str(args.get("uri"))
        if uri not in TOUCHED:
            raise MCPError(types.INVALID_PARAMS, f"no resource {uri}")
        TOUCHED[uri] += 1
        await BUS.publish(ResourceUpdated(uri=uri))
        return types.CallToolResult(content=text({"touched": uri, "times": TOUCHED[uri]}))
    if params.name == "grow":
        if "grown" not in TOOLS:
            TOOLS.append("grown")
        await BUS.publish(ToolsListChanged())
        return types.CallToolResult(content=text({"tools": TOOLS}))
    if params.name == "listens":
        return types.CallToolResult(content=text(OPEN), structured_content={"open": OPEN})
    if params.name in TOOLS:
        return types.CallToolResult(content=text({"tool": params.name}))
    raise MCPError(types.INVALID_PARAMS, f"unknown tool {params.name}")


async def list_resources(ctx: Any, params: Any) -> types.ListResourcesResult:
    return types.ListResourcesResult(resources=[types.Resource(uri=u, name=u.partition("//")[2]) for u in TOUCHED])


async def read_resource(ctx: Any, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
    if params.uri not in TOUCHED:
        raise MCPError(types.INVALID_PARAMS, f"no resource {params.uri}")
    return types.ReadResourceResult(contents=[types.TextResourceContents(uri=params.uri, text=str(TOUCHED[params.uri]))])


async def main() -> None:
    server = Server("watching", on_list_tools=list_tools, on_call_tool=call_tool, on_list_resources=list_resources,
                    on_read_resource=read_resource, on_subscriptions_listen=CountingListen(BUS))
    await serve(server, int(sys.argv[2]) if sys.argv[1:2] == ["--http"] else None)


if __name__ == "__main__":
    anyio.run(main)
