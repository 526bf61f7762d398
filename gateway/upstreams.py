"""Upstream MCP servers: one long-lived client session each, restarted when it dies.

Each upstream's ``mcp.Client`` lives in its own task (the SDK's task groups must be entered
and left by the same task); calls from request handlers go through that session.  A crashed
stdio server is restarted on next use; every call has a timeout; failures become
:class:`UpstreamError` with a short, secret-free message.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from contextlib import suppress
from typing import Any

import mcp_types as types
from mcp import Client, MCPError, StdioServerParameters

from .config import UpstreamConfig
from .errors import GatewayError, ReasonCode

__all__ = ["Upstream", "UpstreamError", "UpstreamPool"]

log = logging.getLogger("intentgate.upstreams")


class UpstreamError(GatewayError):
    """The upstream failed, hung or could not be reached."""

    code = ReasonCode.UPSTREAM_ERROR


class Upstream:
    """One upstream server and its session."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self.name = config.name
        self._client: Client | None = None
        self._runner: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self._lock = asyncio.Lock()
        self.tools: list[types.Tool] = []
        self.restarts = -1

    def _target(self) -> Any:
        c = self.config
        if c.command is not None:
            return StdioServerParameters(
                command=c.command if c.command != "python" else sys.executable,
                args=list(c.args),
                env=dict(c.env) or None,
                cwd=str(c.cwd) if c.cwd else None,
            )
        return c.url

    async def _run(self, ready: asyncio.Future[None]) -> None:
        assert self._stop is not None
        try:
            async with Client(
                self._target(),
                read_timeout_seconds=self.config.timeout_seconds,
                client_info=types.Implementation(name="intentgate", version="0.1.0"),
            ) as client:
                self._client = client
                listing = await client.list_tools()
                self.tools = list(listing.tools)
                ready.set_result(None)
                await self._stop.wait()
        except BaseException as exc:  # noqa: BLE001 - report to the starter, log, end the task
            if not ready.done():
                ready.set_exception(exc if isinstance(exc, Exception) else UpstreamError("upstream cancelled"))
            elif not isinstance(exc, asyncio.CancelledError):
                log.warning("upstream %s session ended: %s", self.name, type(exc).__name__)
        finally:
            self._client = None

    def alive(self) -> bool:
        return self._client is not None and self._runner is not None and not self._runner.done()

    async def ensure(self) -> Client:
        """The live session, starting (or restarting) the upstream if needed."""
        if self.alive():
            return self._client  # type: ignore[return-value]
        async with self._lock:
            if self.alive():
                return self._client  # type: ignore[return-value]
            await self._shutdown()
            self._stop = asyncio.Event()
            ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._runner = asyncio.create_task(self._run(ready), name=f"upstream-{self.name}")
            try:
                async with asyncio.timeout(self.config.timeout_seconds):
                    await ready
            except Exception as exc:  # noqa: BLE001 - any start failure is an upstream error
                await self._shutdown()
                raise UpstreamError(f"upstream {self.name!r} could not be started: {type(exc).__name__}") from exc
            self.restarts += 1
            log.info("upstream %s %s with %d tools", self.name, "restarted" if self.restarts else "started",
                     len(self.tools))
            return self._client  # type: ignore[return-value]

    async def call_tool(self, tool: str, arguments: dict[str, Any], meta: dict[str, Any]) -> types.CallToolResult:
        client = await self.ensure()
        try:
            async with asyncio.timeout(self.config.timeout_seconds):
                return await client.call_tool(tool, arguments, meta=meta)  # type: ignore[arg-type]
        except TimeoutError as exc:
            raise UpstreamError(
                f"upstream {self.name!r} did not answer within {self.config.timeout_seconds}s",
                code=ReasonCode.UPSTREAM_TIMEOUT,
            ) from exc
        except MCPError as exc:
            if exc.code == types.CONNECTION_CLOSED or not self.alive():
                await self._shutdown()  # the server went away: restart it on next use
            raise UpstreamError(f"upstream {self.name!r} failed: {type(exc).__name__}") from exc
        except Exception as exc:  # noqa: BLE001 - crash, broken stream, garbage on the wire
            await self._shutdown()
            raise UpstreamError(f"upstream {self.name!r} failed: {type(exc).__name__}") from exc

    async def _shutdown(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._runner is not None:
            try:
                async with asyncio.timeout(5):
                    with suppress(Exception, asyncio.CancelledError):
                        await self._runner
            except TimeoutError:
                self._runner.cancel()
                with suppress(BaseException):
                    await self._runner
        self._runner = None
        self._client = None

    async def aclose(self) -> None:
        await self._shutdown()


class UpstreamPool:
    """All configured upstreams by name."""

    def __init__(self, configs: list[UpstreamConfig]) -> None:
        self.upstreams = {c.name: Upstream(c) for c in configs}

    def get(self, name: str) -> Upstream | None:
        return self.upstreams.get(name)

    async def start(self) -> dict[str, str]:
        """Start every upstream; returns {name: error} for those that failed (they retry on use)."""
        failures: dict[str, str] = {}
        for up in self.upstreams.values():
            try:
                await up.ensure()
            except UpstreamError as exc:
                failures[up.name] = exc.message
                log.warning("%s", exc.message)
        return failures

    async def aclose(self) -> None:
        for up in self.upstreams.values():
            await up.aclose()
