"""How the test servers serve a low-level ``Server``: over stdio, or over Streamable HTTP on
127.0.0.1:PORT/mcp when given a port.  Imported by the servers run as scripts (their directory
is on ``sys.path``)."""

from __future__ import annotations

from typing import Any

from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server


async def serve(server: Server[Any], http_port: int | None = None) -> None:
    if http_port:
        import uvicorn

        config = uvicorn.Config(server.streamable_http_app(), host="127.0.0.1", port=http_port, log_level="warning")
        await uvicorn.Server(config).serve()
        return
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())
