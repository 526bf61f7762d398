"""The lean leg: ``tools/call`` straight over HTTP, for upstreams on the current protocol.

On 2026-07-28 Streamable HTTP is stateless: a tool call is one POST whose answer is a JSON
body or an event stream ending in the response.  Once the SDK session has negotiated that
version (and listed the tools), :class:`LeanLeg` sends each call as that one POST on the
session's own kept-alive HTTP client, with everything built once that can be: the URL, the
base headers, the ``_meta`` envelope the session stamps (protocol version, client info, the
capabilities the session declares).  Per call it adds what the SDK's stamp adds: ``Mcp-Name``,
the tool's ``Mcp-Param-*`` headers (from its listed ``x-mcp-header`` annotations, with the
SDK's own helpers), a ``progressToken`` when progress is wanted, and ``Authorization: Bearer``
with the call's action token unless the configuration sets ``Authorization``.

The answer is read as the SDK reads it, and failures take the shape the SDK gives them (an
:class:`~mcp.MCPError` for a JSON-RPC error, an HTTP error status, an unexpected content type,
a broken or closed connection; a ``pydantic.ValidationError`` for a result that is not a tool
result; a ``RuntimeError`` for structured content its output schema rejects), so that
``Upstream``'s error mapping treats both paths alike.  The result is validated once, as the
version-free ``CallToolResult`` (by alias); the one thing the 2026-07-28 wire shape requires
that this model does not (``resultType``) is checked on the raw result first.  Structured
content goes through the session's own output-schema check.

On an event stream, progress for this call goes to its ``progress`` sink and log messages to
its ``logs`` sink (they ride this call's own stream, so they belong to it); other
notifications go to ``notified`` (the upstream's handler).  What the leg does not handle it
hands back to the session, only where the tool cannot have run: ``None`` is returned for a
``HEADER_MISMATCH`` (the SDK re-lists the tool and sends again), a redirect (the SDK follows
same-origin ones) and an ``input_required`` result (per the multi-round-trip rules a first
round that asks for input has not executed the tool, so the SDK sending it again and driving
the asks is one execution).  An event stream that ends without a response is a closed
connection; the leg does not resume streams (``Last-Event-ID``): for an upstream that relies
on resumption, set ``lean: false``.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import httpx2
import mcp_types as types
from mcp import MCPError
from mcp.client.session import ClientSession
from mcp.client.streamable_http import DEFAULT_MAX_SSE_EVENT_SIZE
from mcp.shared.inbound import (
    MCP_METHOD_HEADER,
    MCP_NAME_HEADER,
    MCP_PROTOCOL_VERSION_HEADER,
    encode_header_value,
    mcp_param_headers,
    x_mcp_header_map,
)
from mcp_types import (
    CLIENT_CAPABILITIES_META_KEY,
    CLIENT_INFO_META_KEY,
    CONNECTION_CLOSED,
    HEADER_MISMATCH,
    INTERNAL_ERROR,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    PROTOCOL_VERSION_META_KEY,
)
from mcp_types import methods as _methods
from pydantic import TypeAdapter, ValidationError

__all__ = ["LeanLeg", "client_capabilities"]

log = logging.getLogger("intentgate.upstreams")

ProgressSink = Callable[[float, float | None, str | None], Awaitable[None]]
LogSink = Callable[[types.LoggingMessageNotificationParams], Awaitable[None]]
Notified = Callable[[Any], Awaitable[None]]

_NOTIFICATION: TypeAdapter[Any] = TypeAdapter(types.ServerNotification)


def client_capabilities() -> dict[str, Any]:
    """What the gateway's session declares (it passes sampling, elicitation and roots callbacks:
    see ``upstreams``), on the wire as the SDK's session builds it for a modern version."""
    return types.ClientCapabilities(
        sampling=types.SamplingCapability(),
        elicitation=types.ElicitationCapability(form=types.FormElicitationCapability(),
                                                url=types.UrlElicitationCapability()),
        roots=types.RootsCapability(list_changed=True),
    ).model_dump(by_alias=True, mode="json", exclude_none=True)


class LeanLeg:
    """``tools/call`` for one upstream over its session's HTTP client (see the module's docstring)."""

    def __init__(self, url: str, http: httpx2.AsyncClient, session: ClientSession, *, version: str,
                 client_info: types.Implementation, bearer: bool) -> None:
        self._url = httpx2.URL(url)
        self._http = http
        self._session = session
        self._version = version
        self._bearer = bearer  # False when the configuration sets Authorization itself
        self._headers = {
            "accept": "application/json, text/event-stream",
            "content-type": "application/json",
            MCP_PROTOCOL_VERSION_HEADER: version,
            MCP_METHOD_HEADER: "tools/call",
        }
        self._meta = {
            PROTOCOL_VERSION_META_KEY: version,
            CLIENT_INFO_META_KEY: client_info.model_dump(by_alias=True, mode="json", exclude_none=True),
            CLIENT_CAPABILITIES_META_KEY: client_capabilities(),
        }
        self._ids = itertools.count(1)
        self._listed: Sequence[types.Tool] | None = None
        self._param_maps: dict[str, dict[tuple[str, ...], str]] = {}
        self.calls = 0  # calls this leg answered
        self.handed_over = 0  # calls it handed back to the session

    def _param_headers(self, tool: str, arguments: Mapping[str, Any], tools: Sequence[types.Tool]) -> dict[str, str]:
        if tools is not self._listed:  # a new listing: the header maps follow it, as the session's do
            self._param_maps = {t.name: m for t in tools if (m := x_mcp_header_map(t.input_schema))}
            self._listed = tools
        header_map = self._param_maps.get(tool)
        return mcp_param_headers(header_map, arguments) if header_map else {}

    async def call(
        self, tool: str, arguments: dict[str, Any], meta: dict[str, Any], *, tools: Sequence[types.Tool],
        token: str | None, progress: ProgressSink | None, logs: LogSink | None, notified: Notified | None,
        capabilities: dict[str, Any] | None = None,
    ) -> types.CallToolResult | None:
        """The tool's result, or None when the session must make the call (nothing ran upstream).
        ``capabilities``, when given, are declared for this call instead of the session's: those of
        the agent behind it, so that the upstream does not ask what that agent cannot answer."""
        request_id = next(self._ids)
        meta = {**meta, **self._meta}
        if capabilities is not None:
            meta[CLIENT_CAPABILITIES_META_KEY] = capabilities
        if progress is not None:
            meta["progressToken"] = request_id
        body = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                           "params": {"_meta": meta, "name": tool, "arguments": arguments}}).encode()
        headers = {**self._headers, MCP_NAME_HEADER: encode_header_value(tool),
                   **self._param_headers(tool, arguments, tools)}
        if self._bearer and token is not None:
            headers["authorization"] = f"Bearer {token}"
        try:
            response = await self._http.send(
                self._http.build_request("POST", self._url, content=body, headers=headers), stream=True)
        except httpx2.TransportError as exc:
            raise MCPError(CONNECTION_CLOSED, "Connection closed") from exc
        try:
            raw = await self._answer(response, request_id, progress, logs, notified)
        except httpx2.TransportError as exc:
            raise MCPError(CONNECTION_CLOSED, "Connection closed") from exc
        finally:
            await response.aclose()
        result = None if raw is None else await self._result(tool, raw)
        if result is None:
            self.handed_over += 1
        else:
            self.calls += 1
        return result

    async def _answer(self, response: httpx2.Response, request_id: int, progress: ProgressSink | None,
                      logs: LogSink | None, notified: Notified | None) -> dict[str, Any] | None:
        """The raw result of the call, None to hand over, or the error as the SDK's transport gives it."""
        status = response.status_code
        content_type = response.headers.get("content-type", "").lower()
        if 300 <= status < 400:
            return None
        if status >= 400:
            if content_type.startswith("application/json"):
                try:
                    message = json.loads(await response.aread())
                except ValueError:
                    message = None
                if isinstance(message, dict) and "error" in message and "result" not in message:
                    return self._reply(message)
            if status == 404:  # stateless: the HTTP spelling of METHOD_NOT_FOUND
                raise MCPError(METHOD_NOT_FOUND, "Not Found")
            raise MCPError(INTERNAL_ERROR, "Server returned an error response")
        if status == 202:
            raise MCPError(INVALID_REQUEST, "server answered a request with 202 Accepted")
        if content_type.startswith("application/json"):
            return self._reply(_parsed(await response.aread()))
        if not content_type.startswith("text/event-stream"):
            raise MCPError(INVALID_REQUEST, f"Unexpected content type: {content_type}")
        try:
            async for event in httpx2.EventSource(response, max_event_size=DEFAULT_MAX_SSE_EVENT_SIZE):
                if event.event != "message" or not event.data:
                    continue
                message = _parsed(event.data)
                if "id" in message and "method" not in message:
                    return self._reply(message)
                if "method" in message and "id" not in message:
                    await self._notification(message, request_id, progress, logs, notified)
                else:  # 2026-07-28 asks ride results (input_required), never the stream
                    log.warning("upstream sent a request on a tool call's stream: not answered")
        except httpx2.SSEError as exc:
            raise MCPError(CONNECTION_CLOSED, f"SSE stream failed: {exc}") from exc
        raise MCPError(CONNECTION_CLOSED, "SSE stream ended without a response")

    def _reply(self, message: dict[str, Any]) -> dict[str, Any] | None:
        if message.get("jsonrpc") != "2.0":
            raise MCPError(PARSE_ERROR, "Failed to parse JSON-RPC response")
        if "error" in message:
            try:
                error = types.ErrorData.model_validate(message["error"], by_name=False)
            except ValidationError as exc:
                raise MCPError(PARSE_ERROR, "Failed to parse JSON-RPC error") from exc
            if error.code == HEADER_MISMATCH:  # rejected before it ran: the session re-lists and sends again
                return None
            raise MCPError.from_error_data(error)
        result = message.get("result")
        if not isinstance(result, dict):
            raise MCPError(PARSE_ERROR, "Failed to parse JSON-RPC response")
        return result

    async def _result(self, tool: str, raw: dict[str, Any]) -> types.CallToolResult | None:
        kind = raw.get("resultType")
        if not isinstance(kind, str):  # the 2026-07-28 shape requires it: its validation says why not
            _methods.validate_server_result("tools/call", self._version, raw)
        if kind == "input_required":
            return None
        result = types.CallToolResult.model_validate(raw, by_name=False)
        if not result.is_error:
            await self._session.validate_tool_result(tool, result)
        return result

    async def _notification(self, message: dict[str, Any], request_id: int, progress: ProgressSink | None,
                            logs: LogSink | None, notified: Notified | None) -> None:
        method, params = message["method"], message.get("params")
        if method == "notifications/progress":
            match params:
                case {"progressToken": int() as token, "progress": int() | float() as done} if (
                    progress is not None and token == request_id and not isinstance(done, bool)
                ):
                    total, text = params.get("total"), params.get("message")
                    try:
                        await progress(float(done), float(total) if isinstance(total, int | float) else None,
                                       text if isinstance(text, str) else None)
                    except Exception:  # noqa: BLE001 - a sink's failure is not the call's
                        log.exception("progress sink failed")
            return
        try:
            if method == "notifications/message":  # the common one: its own model, not the whole union
                line = types.LoggingMessageNotificationParams.model_validate(params, by_name=False)
                log.debug("upstream log %s: %s", line.level, str(line.data)[:500])
                if logs is not None:
                    await logs(line)
                return
            notification = _NOTIFICATION.validate_python(message, by_name=False)
        except ValidationError:
            log.debug("upstream sent a notification that could not be read: %.100s", method)
            return
        if notified is not None:
            await notified(notification)


def _parsed(data: bytes | str) -> dict[str, Any]:
    try:
        message = json.loads(data)
    except ValueError as exc:
        raise MCPError(PARSE_ERROR, "Failed to parse JSON response") from exc
    if not isinstance(message, dict):
        raise MCPError(PARSE_ERROR, "Failed to parse JSON response")
    return message
