"""An upstream MCP server whose tools ask the client for things mid-call, for the relay tests.

Written with the SDK's low-level server; ``python asking_server.py`` serves over stdio,
``--http PORT`` over Streamable HTTP on 127.0.0.1.
Tools (upstream name ``claims`` in the tests):
  - ``confirm``  asks the user (``elicitation/create``, form mode) whether to go on;
  - ``open_link`` asks the user to visit a URL (``elicitation/create``, URL mode, id ``el-1``); on
                 earlier protocols it then says ``el-1`` and ``el-other`` are complete
                 (``notifications/elicitation/complete``);
  - ``draft``    asks the client's model (``sampling/createMessage``); ``all_servers: true``
                 asks it to include context from every server;
  - ``where``    asks for the client's roots (``roots/list``);
  - ``lookup``   asks nothing;
  - ``capabilities`` asks nothing and returns the client capabilities declared to it (on
                 2026-07-28, those of the very request);
  - ``count``    asks nothing, declares an output schema (``{"n": integer}``) and returns ``{"n": <its
                 argument n>}``, whatever that is (a string breaks the schema).
Every result says what came back: ``{"answer": ...}`` or ``{"refused": {"code", "message",
"data"}}``.  On the 2026-07-28 protocol the question rides the call's result
(``input_required``) and the answer comes with the retried call; on earlier protocols it is
a request of its own, sent while the call runs.  ``ASK_WITH=N`` makes each call wait
(up to 10 s) until N calls are in flight before it asks, so that asks meet concurrent calls.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import anyio
import mcp_types as types
from mcp import MCPError
from mcp.server.lowlevel import Server
from mcp.shared.message import ServerMessageMetadata

from _serving import serve  # this directory (run as a script)

IN_FLIGHT = 0
ENOUGH = asyncio.Event()

TOOLS = {
    "confirm": {"claim_id": {"type": "string"}},
    "open_link": {"claim_id": {"type": "string"}},
    "draft": {"claim_id": {"type": "string"}, "all_servers": {"type": "boolean"}},
    "where": {},
    "lookup": {"claim_id": {"type": "string"}},
    "count": {"n": {}},
    "capabilities": {},
}
COUNT_OUTPUT = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def question(name: str, args: dict[str, Any]) -> tuple[types.ServerRequest, type[Any]] | None:
    if name == "confirm":
        schema = {"type": "object", "properties": {"go_on": {"type": "boolean"}}, "required": ["go_on"]}
        return types.ElicitRequest(params=types.ElicitRequestFormParams(
            message=f"File claim {args.get('claim_id')}?", requested_schema=schema)), types.ElicitResult
    if name == "open_link":
        return types.ElicitRequest(params=types.ElicitRequestURLParams(
            message="Sign in to the claims portal", url="https://claims.example/login",
            elicitation_id="el-1")), types.ElicitResult
    if name == "draft":
        return types.CreateMessageRequest(params=types.CreateMessageRequestParams(
            messages=[types.SamplingMessage(role="user", content=types.TextContent(
                type="text", text=f"Draft a note for claim {args.get('claim_id')}"))],
            max_tokens=50, include_context="allServers" if args.get("all_servers") else None,
        )), types.CreateMessageResult
    if name == "where":
        return types.ListRootsRequest(), types.ListRootsResult
    return None


def _answer(result: Any) -> dict[str, Any]:
    if isinstance(result, types.ErrorData):
        return {"refused": {"code": result.code, "message": result.message, "data": result.data}}
    return {"answer": result.model_dump(mode="json", by_alias=True, exclude_none=True)}


async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
    return types.ListToolsResult(tools=[
        types.Tool(name=n, input_schema={"type": "object", "properties": p},
                   output_schema=COUNT_OUTPUT if n == "count" else None) for n, p in TOOLS.items()])


async def together() -> None:
    """Wait until ``ASK_WITH`` calls are in flight (each call counts itself in)."""
    global IN_FLIGHT
    IN_FLIGHT += 1
    if IN_FLIGHT >= int(os.environ.get("ASK_WITH", "1")):
        ENOUGH.set()
    with anyio.move_on_after(10):
        await ENOUGH.wait()


async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> Any:
    args = params.arguments or {}
    asked = question(params.name, args)
    if params.name == "count":
        return types.CallToolResult(content=[types.TextContent(type="text", text=json.dumps({"n": args.get("n")}))],
                                    structured_content={"n": args.get("n")})
    if params.name == "capabilities":  # what the client declared (on 2026-07-28: on this very request)
        declared = ctx.session.client_capabilities
        seen = declared.model_dump(mode="json", by_alias=True, exclude_none=True) if declared else None
        return types.CallToolResult(content=[types.TextContent(type="text", text=json.dumps(seen))],
                                    structured_content={"capabilities": seen})
    if asked is None:
        if params.name not in TOOLS:
            raise MCPError(types.INVALID_PARAMS, f"unknown tool {params.name}")
        outcome: dict[str, Any] = {"answer": None}
    elif params.input_responses and "q" in params.input_responses:  # 2026-07-28: the retried call
        outcome = _answer(params.input_responses["q"])
    elif not ctx.session.can_send_request:  # 2026-07-28: ask in the result
        await together()
        return types.InputRequiredResult(input_requests={"q": asked[0]})
    else:  # earlier protocols: a request of its own, while this call runs
        await together()
        try:
            outcome = _answer(await ctx.session.send_request(
                asked[0], asked[1], metadata=ServerMessageMetadata(related_request_id=ctx.request_id)))
        except MCPError as exc:
            outcome = _answer(exc.error)
        if params.name == "open_link":  # the user is done at the URL (and some other elicitation too)
            for done in ("el-1", "el-other"):
                await ctx.session.send_notification(types.ElicitCompleteNotification(
                    params=types.ElicitCompleteNotificationParams(elicitation_id=done)))
    outcome["tool"] = params.name
    return types.CallToolResult(content=[types.TextContent(type="text", text=json.dumps(outcome))],
                                structured_content=outcome)


async def main() -> None:
    server = Server("claims", on_list_tools=list_tools, on_call_tool=call_tool)
    await serve(server, int(sys.argv[2]) if sys.argv[1:2] == ["--http"] else None)


if __name__ == "__main__":
    anyio.run(main)
