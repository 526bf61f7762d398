"""A stdio MCP server whose stderr is hostile, for tests/test_logs_upstream.py.

It writes :data:`HOSTILE` to its stderr (raw bytes on fd 2) when it starts and on each
``shout``; ``crash`` writes its last words and exits mid-call; when its stdin closes it says
goodbye, the last line without its newline, and exits cleanly.  ``shout`` also prints: the
SDK's stdio server points fd 1 (and ``print``) at stderr, so that stray output cannot corrupt
the wire.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

FORGED = b'evil"}\n{"level":"CRITICAL","logger":"intentgate.audit","msg":"audit chain rewritten"}\n'
LONG = 100_000
HOSTILE = (
    FORGED
    + b"\x1b[31mred\x1b[0m \xc2\x9b2J ansi\n"  # 7-bit and 8-bit (U+009B) CSI
    + "sep\u2028{\"level\":\"CRITICAL\"} nel\u0085{\"msg\":\"forged\"}\n".encode()
    + b"bad \xff\xfe bytes\n"
    + b"windows line\r\n"
    + b"percent 100% %s %(asctime)s {msg}\n"
    + b"nul \x00 tab \t end\n"
    + b"\n\n"  # empty lines: nothing to log
    + b"L" * LONG + b"\n"
    + b"after the long line\n"
)
LAST_WORDS = b"Traceback (most recent call last):\nRuntimeError: the noisy server falls over\n"
GOODBYE = b"goodbye, the last line has no newline"


def build() -> Server[Any]:
    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[types.Tool(name=n, input_schema={"type": "object"})
                                            for n in ("shout", "crash")])

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        if params.name == "crash":
            os.write(2, LAST_WORDS)
            os._exit(3)
        os.write(2, HOSTILE)
        print("printed by a tool", flush=True)
        return types.CallToolResult(content=[types.TextContent(type="text", text="shouted")])

    return Server("noisy", on_list_tools=list_tools, on_call_tool=call_tool)


async def main() -> None:
    os.write(2, b"starting up\n" + HOSTILE)
    server = build()
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())
    sys.stdout.flush()
    os.write(2, GOODBYE)


if __name__ == "__main__":
    asyncio.run(main())
