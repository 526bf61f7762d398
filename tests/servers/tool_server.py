"""An upstream MCP tool server for the tests, written with the SDK's low-level server.

``python tool_server.py --name payments`` serves that upstream's tools over stdio.  Every
call's result echoes what the server received (tool, arguments, whether a gateway token
came in ``_meta``).  With ``INTENTGATE_JWKS`` set, the server verifies each call's action
token with ``gateway.verify`` (signature, audience, arguments digest, single use in its own
ledger) and refuses calls without a valid one.  Extra tools for fault tests: ``crash``
exits the process, ``hang`` never answers.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
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

from gateway.errors import TokenError  # noqa: E402
from gateway.keys import PublicKeySet  # noqa: E402
from gateway.verify import ActionTokenVerifier, SqliteJtiLedger  # noqa: E402

TOOLS: dict[str, dict[str, dict[str, Any]]] = {
    "tickets": {
        "get_ticket": {"ticket_id": {"type": "string"}},
        "add_comment": {"ticket_id": {"type": "string"}, "body": {"type": "string"}},
    },
    "orders": {
        "get_order": {"order_id": {"type": "string"}},
        "list_orders": {"customer_email": {"type": "string"}, "page": {"type": "integer"}},
    },
    "payments": {
        "refund": {"order_id": {"type": "string"}, "amount": {"type": "number"}, "currency": {"type": "string"},
                   "reason": {"type": "string"}},
    },
    "email": {
        "send": {"to": {"type": "string"}, "subject": {"type": "string"}, "body": {"type": "string"}},
    },
    "secrets": {
        "describe_credential": {"service": {"type": "string"}},
        "rotate_credential": {"service": {"type": "string"}, "grace_period_seconds": {"type": "integer"}},
    },
}
FAULTS = {"crash": {}, "hang": {}}


def build(name: str) -> Server[Any]:
    tools = {**TOOLS[name], **FAULTS}
    verifier = None
    ledger = None
    if os.environ.get("INTENTGATE_JWKS"):
        verifier = ActionTokenVerifier(PublicKeySet.from_file(Path(os.environ["INTENTGATE_JWKS"])))
        ledger = SqliteJtiLedger(Path(tempfile.mkdtemp(prefix=f"jti-{name}-")) / "jti.db")

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(
            tools=[
                types.Tool(name=t, description=f"{name}.{t} (test server)",
                           input_schema={"type": "object", "properties": props})
                for t, props in tools.items()
            ]
        )

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        args = params.arguments or {}
        meta = dict(params.meta or {})
        token = meta.get("intentgate/token")
        if params.name == "crash":
            os._exit(3)
        if params.name == "hang":
            await anyio.sleep_forever()
        verified = None
        if verifier is not None:
            try:
                claims = await verifier.verify_and_consume(
                    token or "", tool=f"{name}.{params.name}", arguments=args, audience=name, ledger=ledger
                )
                verified = claims.jti
            except TokenError as exc:
                return types.CallToolResult(
                    content=[types.TextContent(type="text", text=f"refused: {exc.code.value}")],
                    structured_content={"refused": exc.code.value}, is_error=True,
                )
        echo = {
            "upstream": name, "tool": params.name, "arguments": args, "had_token": bool(token),
            "verified_jti": verified, "meta_keys": sorted(meta),
            # proves a brokered secret arrived without ever echoing it
            "brokered_secret_sha256": hashlib.sha256(os.environ.get("BROKERED_SECRET", "").encode()).hexdigest(),
        }
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=json.dumps(echo))], structured_content=echo
        )

    return Server(name, on_list_tools=list_tools, on_call_tool=call_tool)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True, choices=sorted(TOOLS))
    parser.add_argument("--http", type=int, metavar="PORT", help="serve Streamable HTTP on 127.0.0.1:PORT/mcp")
    args = parser.parse_args()
    server = build(args.name)
    if args.http:
        import uvicorn

        config = uvicorn.Config(server.streamable_http_app(), host="127.0.0.1", port=args.http, log_level="warning")
        await uvicorn.Server(config).serve()
        return
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


if __name__ == "__main__":
    asyncio.run(main())
