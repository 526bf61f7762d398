"""One JSON parsing policy for the HTTP bodies of the REST and reviewer APIs.

JSON parsers accept ``NaN``, ``Infinity`` and integers of any size, none of which the
hash-chained log can store (canonical JSON, RFC 8785: finite IEEE-754 doubles, integers up
to 2**53).  Such a body is refused here, before any handler: 400 with reason
``malformed_request:non_finite`` or ``malformed_request:integer``, never a 5xx.  A body that
is not JSON at all goes on to its handler, which refuses it in its own terms.  And FastAPI's
validation errors are answered without echoing the input (which may be what could not be
encoded).

``/mcp`` is left to the MCP front, after the agent is authenticated: there such a value in
a call is a recorded decision of that agent (``malformed_request:arguments``), with the tool
it was for, which says more to a reviewer than an anonymous 400 would.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from .errors import ReasonCode, reason

__all__ = ["JsonBodyPolicy", "validation_error"]

log = logging.getLogger("intentgate.web")

MAX_INTEGER = 2**53  # canonical JSON (RFC 8785) stores integers exactly up to here
_METHODS = {"POST", "PUT", "PATCH"}


class _Refused(ValueError):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _constant(name: str) -> Any:
    raise _Refused("non_finite")


def _integer(text: str) -> int:
    value = int(text)
    if abs(value) > MAX_INTEGER:
        raise _Refused("integer")
    return value


def _float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):  # 1e999 parses as infinity
        raise _Refused("non_finite")
    return value


def body_problem(body: bytes) -> str | None:
    """``non_finite`` or ``integer`` when the JSON body holds what the log cannot; else None
    (also for a body that is not JSON: its handler says so)."""
    try:
        json.loads(body, parse_constant=_constant, parse_int=_integer, parse_float=_float)
    except _Refused as exc:
        return exc.detail
    except (ValueError, RecursionError):
        return None
    return None


class JsonBodyPolicy:
    """ASGI middleware applying :func:`body_problem` to every JSON request body."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (scope["type"] != "http" or scope.get("method") not in _METHODS
                or scope.get("path", "").rstrip("/").endswith("/mcp")):
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if b"json" not in headers.get(b"content-type", b""):
            await self.app(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message]), send)
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:  # the handlers refuse it as too large: do not buffer more here
                await self.app(scope, _replay([{"type": "http.request", "body": b"".join(chunks),
                                                "more_body": more}], receive), send)
                return
        body = b"".join(chunks)
        problem = body_problem(body)
        if problem is None:
            await self.app(scope, _replay([{"type": "http.request", "body": body, "more_body": False}], receive),
                           send)
            return
        code = reason(ReasonCode.MALFORMED_REQUEST, problem)
        log.info("request body refused: %s (%s %s)", code, scope.get("method"), scope.get("path", "")[:100])
        text = ("numbers that are not finite" if problem == "non_finite"
                else f"integers beyond {MAX_INTEGER}") + " cannot be accepted"
        await JSONResponse({"error": "malformed_request", "reasons": [code], "detail": text},
                           status_code=400)(scope, receive, send)


def _replay(messages: list[dict[str, Any]], then: Any = None) -> Any:
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 for a body or query that does not validate: where and why, never the input itself."""
    errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))[:300],
               "type": str(e.get("type", ""))} for e in exc.errors()[:50]]
    return JSONResponse({"detail": errors, "reasons": [ReasonCode.MALFORMED_REQUEST.value]}, status_code=422)
