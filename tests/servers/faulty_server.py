"""A misbehaving upstream MCP server for the fault tests (tests/test_faults_upstream.py).

``python faulty_server.py --name tickets`` serves over stdio, ``--http PORT`` over Streamable
HTTP on 127.0.0.1.  Every tool first verifies and burns the call's action token with
``intentgate.verify`` (keys from ``INTENTGATE_JWKS``; a refused token is a tool error and
nothing runs), then appends one JSON line ``{"tool", "jti"}`` to the file named by
``EXECUTED``: that file is what the upstream actually executed.  Then the tool does its job
or its fault:

- ``get_ticket``: answers normally;
- ``crash``: the process exits mid-call;
- ``hang``: never answers;
- ``garbage`` (stdio): writes a line that is not JSON to stdout, then never answers;
- ``bad_reply`` (stdio): answers with a JSON-RPC response whose result is not a tool result;
- ``http_500``, ``html``, ``truncated_sse`` (HTTP): the HTTP response to the call is a 500, an
  HTML page, or an event stream cut off in the middle of the JSON-RPC message.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from intentgate.errors import TokenError  # noqa: E402
from intentgate.keys import PublicKeySet  # noqa: E402
from intentgate.verify import ActionTokenVerifier, SqliteJtiLedger  # noqa: E402

STDIO_FAULTS = ("crash", "hang", "garbage", "bad_reply")
# the SDK's stdio server diverts fd 1 to stderr, so that stray prints cannot corrupt the wire;
# the faults write on the wire itself, through this duplicate taken before it does
WIRE = os.dup(1)
HTTP_FAULTS = ("http_500", "html", "truncated_sse")


class Executor:
    """Token check and the execution log shared by the MCP handler and the HTTP faults."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.verifier = ActionTokenVerifier(PublicKeySet.from_file(Path(os.environ["INTENTGATE_JWKS"])))
        self.ledger = SqliteJtiLedger(Path(tempfile.mkdtemp(prefix=f"jti-{name}-")) / "jti.db")
        self.executed = Path(os.environ["EXECUTED"])

    async def admit(self, tool: str, arguments: dict[str, Any], meta: dict[str, Any]) -> str | None:
        """Verify and burn the token, log the execution; the refusal code, or None when admitted."""
        try:
            claims = await self.verifier.verify_and_consume(
                meta.get("intentgate/token") or "", tool=f"{self.name}.{tool}", arguments=arguments,
                audience=self.name, ledger=self.ledger,
            )
        except TokenError as exc:
            return exc.code.value
        with self.executed.open("a") as log:
            log.write(json.dumps({"tool": tool, "jti": claims.jti}) + "\n")
        return None


def build(name: str, executor: Executor) -> Server[Any]:
    tools = ["get_ticket", *STDIO_FAULTS, *HTTP_FAULTS]

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[
            types.Tool(name=t, input_schema={"type": "object", "properties": {"ticket_id": {"type": "string"}}})
            for t in tools
        ])

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        args = params.arguments or {}
        refused = await executor.admit(params.name, args, dict(params.meta or {}))
        if refused is not None:
            return types.CallToolResult(content=[types.TextContent(type="text", text=f"refused: {refused}")],
                                        structured_content={"refused": refused}, is_error=True)
        if params.name == "crash":
            os._exit(3)
        if params.name == "garbage":
            os.write(WIRE, b"Traceback (most recent call last): this is not JSON-RPC\n")
        if params.name == "bad_reply":
            reply = {"jsonrpc": "2.0", "id": ctx.request_id, "result": {"content": "not a list", "isError": "maybe"}}
            os.write(WIRE, json.dumps(reply).encode() + b"\n")
        if params.name in ("hang", "garbage", "bad_reply"):
            await anyio.sleep_forever()
        echo = {"upstream": name, "tool": params.name, "arguments": args}
        return types.CallToolResult(content=[types.TextContent(type="text", text=json.dumps(echo))],
                                    structured_content=echo)

    return Server(name, on_list_tools=list_tools, on_call_tool=call_tool)


def with_http_faults(app: Any, executor: Executor) -> Any:
    """ASGI wrapper: a tools/call of one of ``HTTP_FAULTS`` gets a broken HTTP response."""

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            request = json.loads(body)
            params = request["params"] if request.get("method") == "tools/call" else {}
        except (ValueError, KeyError, TypeError, AttributeError):
            params = {}
        fault = params.get("name") if isinstance(params, dict) else None
        if fault not in HTTP_FAULTS:
            replayed = False

            async def replay() -> dict[str, Any]:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            return await app(scope, replay, send)
        if await executor.admit(fault, params.get("arguments") or {}, params.get("_meta") or {}) is not None:
            status, ctype, payload = 403, b"text/plain", b"refused"
        elif fault == "http_500":
            status, ctype, payload = 500, b"text/plain", b"Internal Server Error"
        elif fault == "html":
            status, ctype, payload = 200, b"text/html", b"<html><body>502 Bad Gateway</body></html>"
        else:
            status, ctype = 200, b"text/event-stream"
            payload = b'event: message\ndata: {"jsonrpc": "2.0", "id": ' + json.dumps(request["id"]).encode() + b', "resu'
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", ctype)]})
        await send({"type": "http.response.body", "body": payload, "more_body": fault == "truncated_sse"})
        if fault == "truncated_sse":
            await asyncio.sleep(0.05)
            raise ConnectionResetError("connection cut mid-event")  # the server drops the stream
        return None

    return wrapped


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--http", type=int, metavar="PORT")
    args = parser.parse_args()
    executor = Executor(args.name)
    server = build(args.name, executor)
    if args.http:
        import uvicorn

        app = with_http_faults(server.streamable_http_app(), executor)
        config = uvicorn.Config(app, host="127.0.0.1", port=args.http, log_level="critical")
        await uvicorn.Server(config).serve()
        return
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


if __name__ == "__main__":
    asyncio.run(main())
