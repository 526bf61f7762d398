"""``intentgate stdio``: the gateway as an MCP server on stdin/stdout."""

from __future__ import annotations

import logging
import os
from typing import Annotated, Any

import typer

from ..errors import GatewayError
from .common import ConfigOption, config_or_exit, err_console

__all__ = ["serve", "stdio"]


def _log_to_stderr(level: str | None = None) -> None:
    """stdout carries the protocol: every log line goes to stderr, as JSON (see ``logs``); the level
    is ``level``, else INTENTGATE_LOG_LEVEL, else warning."""
    from ..logs import configure_logging

    configure_logging(level or os.environ.get("INTENTGATE_LOG_LEVEL", "WARNING"))


def stdio(
    config: ConfigOption = None,
    agent_token: Annotated[
        str | None,
        typer.Option(envvar="INTENTGATE_AGENT_TOKEN", help="the agent's workload token (JWT)", show_default=False),
    ] = None,
) -> None:
    """Serve the gateway over stdio to one agent, identified by its workload token."""
    import asyncio

    from mcp.server.stdio import stdio_server

    from ..front import Front
    from ..runtime import Runtime
    from ..upstreams import UpstreamPool

    _log_to_stderr()
    cfg = config_or_exit(config)

    async def main() -> None:
        rt = await Runtime.open(cfg)
        try:
            try:
                identity = rt.identity_verifier().verify(agent_token)
            except GatewayError as exc:
                logging.getLogger("intentgate.front").warning("stdio agent rejected: %s", exc.message)
                err_console.print("[red]error:[/red] no valid workload token (--agent-token / INTENTGATE_AGENT_TOKEN)")
                raise typer.Exit(2) from exc

            async def identify(_ctx: Any) -> Any:
                return identity

            pool = UpstreamPool(cfg.upstreams)
            sweeper = asyncio.create_task(rt.run_background(), name="background")
            try:
                front = Front(rt, pool, identify)
                async with stdio_server() as (read, write):
                    await front.server.run(read, write, front.server.create_initialization_options())
            finally:
                sweeper.cancel()
                await pool.aclose()
        finally:
            await rt.aclose()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass


def serve(
    config: ConfigOption = None,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8080,
    log_level: Annotated[str | None, typer.Option(
        help="log level of the gateway and uvicorn: debug, info, warning, error (default: $INTENTGATE_LOG_LEVEL, "
             "else warning)", show_default=False)] = None,
) -> None:
    """Serve the gateway over HTTP: MCP at /mcp, /v1/decide, /.well-known/jwks.json, /healthz."""
    import uvicorn

    from ..web import create_app

    _log_to_stderr(log_level)
    cfg = config_or_exit(config)
    level = logging.getLogger().getEffectiveLevel()
    app = create_app(cfg)
    app.state.listen = f"http://{host if ':' not in host else f'[{host}]'}:{port}"  # announced once ready
    uvicorn.run(app, host=host, port=port, log_level=level, log_config=None, lifespan="on")
