"""Upstream MCP servers: one long-lived client session each, restarted when it dies.

Each upstream's ``mcp.Client`` lives in its own task (the SDK's task groups must be entered
and left by the same task); calls from request handlers go through that session.  A crashed
stdio server is restarted on next use; every request has a timeout; failures become
:class:`UpstreamError` with a short, secret-free message.

A stdio server's stderr is read line by line into the gateway's log (``upstream_stderr``).

HTTP upstreams get the configured headers on every request, and each forwarded tool call's
action token also as ``Authorization: Bearer`` (read from the request's own
``_meta["intentgate/token"]``, so concurrent calls cannot get each other's token), unless the
configuration sets an ``Authorization`` header itself (a brokered credential wins).

Log messages an upstream sends (``notifications/message``) are not tied to a request by the
SDK's client session; they are passed to the one call in flight on that upstream, and
dropped (logged here at debug level) when several calls are in flight, so that one agent can
never see log lines caused by another agent's call.

What an upstream asks of the client during a call (sampling, elicitation, roots: see
``asks``) goes to that call's relay: exactly, when the ask rides the call's own result
(2026-07-28 ``input_required``, driven in the caller's task, found by a context variable);
otherwise to the one call in flight, and refused when several are.  The session declares
sampling, elicitation and roots to every upstream (it is shared by all agents); whether the
agent behind a call can take an ask is checked when it comes.  For an agent on 2026-07-28
(``hold_asks``) an upstream's ``input_required`` is not driven here but returned, for the
front to put to the agent in its own result (``roundtrips``), and the agent's answers come
back as a continuation (``input_responses`` and the upstream's ``request_state``).

Each forwarded tool call is a CLIENT span when tracing is on (``intentgate.tracing``), and its
``_meta`` carries that span's W3C trace context, so the tool server's spans are its children.
A session's own task starts with no trace context: its handshake and listings belong to no
agent's request.

Tool calls to an HTTP upstream whose session negotiated the current protocol (2026-07-28,
stateless) take the lean leg (``upstream_lean``): one POST on the session's HTTP client, the
result validated once; what it does not handle goes through the session, and so do listings,
reads, prompts and every request to stdio and legacy upstreams.  ``lean: false`` in the
upstream's configuration sends everything through the session.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import sys
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from contextlib import asynccontextmanager, nullcontext, suppress
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from opentelemetry.trace import SpanKind

from .config import UpstreamConfig
from .errors import GatewayError, ReasonCode
from .tracing import OFF, Tracing, detached, failed
from .upstream_lean import LeanLeg
from .upstream_listen import Listener
from .upstream_stderr import stdio_transport

__all__ = ["Upstream", "UpstreamError", "UpstreamPool"]

log = logging.getLogger("intentgate.upstreams")

TOKEN_META = "intentgate/token"
MAX_LIST_PAGES = 50
CLIENT_INFO = types.Implementation(name="intentgate", version="0.1.0")
LogSink = Callable[[types.LoggingMessageNotificationParams], Awaitable[None]]
ProgressSink = Callable[[float, float | None, str | None], Awaitable[None]]
Unattributed = Callable[[str, Any, Any, int], Awaitable[types.ErrorData]]

_relay: contextvars.ContextVar[Any] = contextvars.ContextVar("intentgate_ask_relay", default=None)


class ActionTokenAuth(httpx2.Auth):
    """``Authorization: Bearer <action token>`` on each HTTP request that carries one in ``_meta``.

    The token is read from the JSON-RPC request body itself, so the header always belongs
    to the very call it authorises.  Requests without a token (session set-up, listings)
    and requests that already have an ``Authorization`` header are left alone.
    """

    requires_request_body = True

    def auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, httpx2.Response, None]:
        if request.method == "POST" and "authorization" not in request.headers:
            token = _token_in(request.content)
            if token is not None:
                request.headers["Authorization"] = f"Bearer {token}"
        yield request


def _token_of(meta: dict[str, Any]) -> str | None:
    token = meta.get(TOKEN_META)
    return token if isinstance(token, str) else None


def _token_in(body: bytes) -> str | None:
    if TOKEN_META.encode() not in body:
        return None
    try:
        message = json.loads(body)
        token = message["params"]["_meta"][TOKEN_META]
    except (ValueError, KeyError, TypeError):
        return None
    return token if isinstance(token, str) else None


class UpstreamError(GatewayError):
    """The upstream failed, hung or could not be reached."""

    code = ReasonCode.UPSTREAM_ERROR


class Upstream:
    """One upstream server and its session."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self.name = config.name
        self._client: Client | None = None
        self.lean: LeanLeg | None = None  # the session's lean tools/call leg, when it has one
        self._runner: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self._lock = asyncio.Lock()
        self.tools: list[types.Tool] = []
        self.restarts = -1
        self._log_sinks: list[LogSink] = []
        self._relays: list[Any] = []
        self.unattributed: Unattributed | None = None  # records an ask no single call owns (set by the front)
        self.notified: Callable[[Upstream, Any], Awaitable[None]] | None = None  # resource updates, list changes
        self.tracing: Tracing = OFF  # the gateway's (set by the front)
        self.listener = Listener(self.name)  # its listen stream, on 2026-07-28 (the URIs outlive a session)

    def _target(self, http: httpx2.AsyncClient | None) -> Any:
        c = self.config
        if c.command is not None:
            return stdio_transport(StdioServerParameters(
                command=c.command if c.command != "python" else sys.executable,
                args=list(c.args),
                env=dict(c.env) or None,
                cwd=str(c.cwd) if c.cwd else None,
            ), self.name)  # its stderr becomes records of the gateway's log
        assert c.url is not None and http is not None
        return streamable_http_client(c.url, http_client=http)

    def _http_client(self) -> httpx2.AsyncClient | None:
        if self.config.url is None:
            return None
        return httpx2.AsyncClient(
            headers=dict(self.config.headers),
            auth=ActionTokenAuth(),
            timeout=httpx2.Timeout(self.config.timeout_seconds, read=max(self.config.timeout_seconds, 300)),
        )

    async def _on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        log.debug("upstream %s log %s: %s", self.name, params.level, str(params.data)[:500])
        if len(self._log_sinks) == 1:  # attributable to exactly one call
            await self._log_sinks[0](params)

    async def _relay_for(self, action: str, kind: str) -> Any:
        """The relay of the call an ask belongs to, or the error to answer the upstream with."""
        relay = _relay.get()
        if relay is None and len(self._relays) == 1:
            relay = self._relays[0]
        if relay is not None:
            return relay
        log.info("upstream %s asked %s with %d calls in flight: refused", self.name, action, len(self._relays))
        if self.unattributed is not None:
            return await self.unattributed(self.name, action, kind, len(self._relays))
        return types.ErrorData(code=types.INVALID_REQUEST, message="no call to ask on behalf of")

    async def _on_sampling(self, context: Any, params: types.CreateMessageRequestParams) -> Any:
        relay = await self._relay_for("sampling/createMessage", "sampling")
        return relay if isinstance(relay, types.ErrorData) else await relay.sampling(params)

    async def _on_elicitation(self, context: Any, params: types.ElicitRequestParams) -> Any:
        kind = "elicitation_url" if isinstance(params, types.ElicitRequestURLParams) else "elicitation"
        relay = await self._relay_for("elicitation/create", kind)
        return relay if isinstance(relay, types.ErrorData) else await relay.elicitation(params)

    async def _on_roots(self, context: Any) -> Any:
        relay = await self._relay_for("roots/list", "roots")
        return relay if isinstance(relay, types.ErrorData) else await relay.roots()

    async def _on_message(self, message: Any) -> None:
        """Notifications the session surfaces: a tool list change is followed here (the tools are
        listed again); it and resource updates and other list changes go on to the front."""
        if isinstance(message, Exception):
            log.debug("upstream %s: %s", self.name, type(message).__name__)
            return
        if isinstance(message, types.ToolListChangedNotification) and self._client is not None:
            try:
                async with self._guarded():
                    self.tools = list((await self._client.list_tools(cache_mode="bypass")).tools)
                log.info("upstream %s changed its tools: now %d", self.name, len(self.tools))
            except UpstreamError as exc:
                log.warning("upstream %s: tools could not be listed again: %s", self.name, exc.message)
        if self.notified is not None:
            await self.notified(self, message)

    async def _run(self, ready: asyncio.Future[None]) -> None:
        assert self._stop is not None
        http = self._http_client()
        try:
            async with http if http is not None else nullcontext(), Client(
                self._target(http),
                read_timeout_seconds=self.config.timeout_seconds,
                mode=self.config.protocol,
                client_info=CLIENT_INFO,
                logging_callback=self._on_log,
                sampling_callback=self._on_sampling,
                elicitation_callback=self._on_elicitation,
                list_roots_callback=self._on_roots,
                message_handler=self._on_message,
            ) as client:
                self._client = client
                listing = await client.list_tools()
                self.tools = list(listing.tools)
                self.lean = self._lean_leg(client, http)
                ready.set_result(None)
                if Listener.serves(client):  # 2026-07-28: changes come only on a listen stream
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self.listener.run, client)
                        await self._stop.wait()
                        tg.cancel_scope.cancel()
                else:
                    await self._stop.wait()
        except BaseException as exc:  # noqa: BLE001 - report to the starter, log, end the task
            if not ready.done():
                ready.set_exception(exc if isinstance(exc, Exception) else UpstreamError("upstream cancelled"))
            elif not isinstance(exc, asyncio.CancelledError):
                log.warning("upstream %s session ended: %s", self.name, type(exc).__name__)
        finally:
            self._client = None
            self.lean = None

    def _lean_leg(self, client: Client, http: httpx2.AsyncClient | None) -> LeanLeg | None:
        c = self.config
        if not c.lean or http is None or c.url is None or client.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            return None
        return LeanLeg(c.url, http, client.session, version=client.protocol_version, client_info=CLIENT_INFO,
                       bearer=not any(k.lower() == "authorization" for k in c.headers))

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
            with detached():  # the task copies the context: not that of the request that happened to start it
                self._runner = asyncio.create_task(self._run(ready), name=f"upstream-{self.name}")
            try:
                async with asyncio.timeout(self.config.start_timeout_seconds):
                    await ready
            except Exception as exc:  # noqa: BLE001 - any start failure is an upstream error
                await self._shutdown()
                raise UpstreamError(f"upstream {self.name!r} could not be started: {type(exc).__name__}") from exc
            self.restarts += 1
            log.info("upstream %s %s with %d tools", self.name, "restarted" if self.restarts else "started",
                     len(self.tools))
            return self._client  # type: ignore[return-value]

    @asynccontextmanager
    async def _guarded(self) -> AsyncIterator[None]:
        """Timeout and error mapping shared by every request to this upstream."""
        try:
            async with asyncio.timeout(self.config.timeout_seconds):
                yield
        except TimeoutError as exc:
            raise UpstreamError(
                f"upstream {self.name!r} did not answer within {self.config.timeout_seconds}s",
                code=ReasonCode.UPSTREAM_TIMEOUT,
            ) from exc
        except MCPError as exc:
            if exc.code == types.CONNECTION_CLOSED or not self.alive():
                await self._shutdown()  # the server went away: restart it on next use
            raise UpstreamError(f"upstream {self.name!r} failed: {type(exc).__name__}") from exc
        except UpstreamError:
            raise
        except Exception as exc:  # noqa: BLE001 - crash, broken stream, garbage on the wire
            await self._shutdown()
            raise UpstreamError(f"upstream {self.name!r} failed: {type(exc).__name__}") from exc

    async def call_tool(
        self, tool: str, arguments: dict[str, Any], meta: dict[str, Any], *,
        progress: ProgressSink | None = None, logs: LogSink | None = None, asks: Any = None,
        decision_id: str | None = None, hold_asks: bool = False, input_responses: types.InputResponses | None = None,
        request_state: str | None = None,
    ) -> types.CallToolResult | types.InputRequiredResult:
        """Forward one tool call; ``progress`` and ``logs`` receive what the upstream reports for
        it, and ``asks`` (an ``asks.AskRelay``) what it asks of the client.  ``meta`` goes with
        it, the trace context of this call's span added when tracing.

        ``hold_asks`` (the agent is on 2026-07-28 and cannot be sent a request): an upstream's
        ``input_required`` is returned, not driven, for the gateway to put to the agent in its
        own result; ``input_responses`` and ``request_state`` continue such a call (the
        upstream's own state).  Asks a 2025-era upstream sends as requests still go to ``asks``."""
        client = await self.ensure()
        lean = self.lean
        if logs is not None:
            self._log_sinks.append(logs)
        if asks is not None:
            self._relays.append(asks)
        reset = _relay.set(asks)
        try:
            with self.tracing.span(f"tools/call {tool}", SpanKind.CLIENT) as span:
                if span.is_recording():
                    span.set_attributes({
                        "mcp.method.name": "tools/call", "gen_ai.operation.name": "execute_tool",
                        "gen_ai.tool.name": tool, "network.transport": "pipe" if self.config.command else "tcp",
                        "intentgate.upstream": self.name})
                    if decision_id is not None:
                        span.set_attribute("intentgate.decision_id", decision_id)
                try:
                    async with self._guarded():  # one timeout, also when the lean leg hands the call over
                        meta = self.tracing.inject(meta)
                        continuing = input_responses is not None or request_state is not None
                        result: types.CallToolResult | types.InputRequiredResult | None = None
                        if lean is not None and not continuing:  # hands input_required over: the tool has not run
                            result = await lean.call(
                                tool, arguments, meta, tools=self.tools, token=_token_of(meta), progress=progress,
                                logs=logs, notified=self._on_message,
                                capabilities=None if asks is None else asks.capabilities())
                        if result is None and (hold_asks or continuing):
                            result = await client.session.call_tool(
                                tool, arguments, meta=meta, input_responses=input_responses,
                                request_state=request_state, allow_input_required=True,
                                progress_callback=progress,  # type: ignore[arg-type]
                            )
                        elif result is None:
                            result = await client.call_tool(
                                tool, arguments, meta=meta,
                                progress_callback=progress,  # type: ignore[arg-type]
                            )
                except UpstreamError as exc:
                    failed(span, exc.code.value, exc.message)
                    raise
                if isinstance(result, types.CallToolResult) and result.is_error:
                    failed(span, "tool_error")
                return result
        finally:
            _relay.reset(reset)
            if logs is not None:
                self._log_sinks.remove(logs)
            if asks is not None:
                self._relays.remove(asks)

    async def read_resource(self, uri: str) -> types.ReadResourceResult:
        client = await self.ensure()
        async with self._guarded():
            return await client.read_resource(uri, cache_mode="bypass")

    async def get_prompt(self, name: str, arguments: dict[str, str] | None) -> types.GetPromptResult:
        client = await self.ensure()
        async with self._guarded():
            return await client.get_prompt(name, arguments)

    async def complete(self, ref: types.PromptReference | types.ResourceTemplateReference, argument: dict[str, str],
                       context_arguments: dict[str, str] | None) -> types.CompleteResult:
        client = await self.ensure()
        if client.server_capabilities is None or client.server_capabilities.completions is None:
            return types.CompleteResult(completion=types.Completion(values=[]))
        async with self._guarded():
            return await client.complete(ref, argument, context_arguments)

    def can_subscribe(self) -> bool:
        caps = self._client.server_capabilities if self._client is not None else None
        return bool(caps and caps.resources and caps.resources.subscribe)

    async def subscribe(self, uri: str, *, on: bool = True) -> None:
        """``resources/subscribe`` (or ``unsubscribe``) on the gateway's session (2025-era servers),
        or, on 2026-07-28, a listen stream for the new set of URIs (see ``upstream_listen``)."""
        client = await self.ensure()
        if Listener.serves(client):
            async with self._guarded():
                honored = await self.listener.want(uri, on)
            if on and not honored:
                raise UpstreamError(f"upstream {self.name!r} did not accept a subscription to that resource")
            return
        async with self._guarded():
            with warnings.catch_warnings():  # removed as of 2026-07-28; still what 2025-era servers speak
                warnings.simplefilter("ignore", MCPDeprecationWarning)
                await (client.subscribe_resource(uri) if on else client.unsubscribe_resource(uri))

    async def list_resources(self) -> list[types.Resource]:
        return await self._list_all("resources", lambda c, cur: c.list_resources(cursor=cur), "resources")

    async def list_resource_templates(self) -> list[types.ResourceTemplate]:
        return await self._list_all(
            "resources", lambda c, cur: c.list_resource_templates(cursor=cur), "resource_templates"
        )

    async def list_prompts(self) -> list[types.Prompt]:
        return await self._list_all("prompts", lambda c, cur: c.list_prompts(cursor=cur), "prompts")

    async def _list_all(
        self, capability: str, fetch: Callable[[Client, str | None], Awaitable[Any]], field: str
    ) -> list[Any]:
        """Every page of one listing (none when the upstream lacks the capability)."""
        client = await self.ensure()
        if getattr(client.server_capabilities, capability, None) is None:
            return []
        items: list[Any] = []
        cursor: str | None = None
        async with self._guarded():
            for _ in range(MAX_LIST_PAGES):
                page = await fetch(client, cursor)
                items.extend(getattr(page, field))
                cursor = page.next_cursor
                if not cursor:
                    break
            else:
                log.warning("upstream %s: %s listing cut at %d pages", self.name, field, MAX_LIST_PAGES)
        return items

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
