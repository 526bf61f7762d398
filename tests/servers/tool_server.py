"""An upstream MCP tool server for the tests, written with the SDK's low-level server.

``python tool_server.py --name payments`` serves that upstream's tools over stdio.  Every
call's result echoes what the server received (tool, arguments, whether a gateway token
came in ``_meta`` and any W3C trace context there, which ``Authorization`` header came over
HTTP).  With ``INTENTGATE_JWKS`` set, the server verifies each call's action token with
``intentgate.verify`` (signature, audience, arguments digest, single use in its own ledger) and
refuses calls without a valid one (``CAPTURE_TOKENS=FILE`` appends each raw token to FILE,
for replay tests).
``RECORD_CALLS=FILE`` appends one JSON line per call that came with a token (upstream, tool,
arguments, the raw token, and its ``jti`` once verified or the refusal code) and fsyncs it
before the call runs, so a crash test can match what the server executed against the
gateway's database.  Extra tools for fault tests: ``crash`` exits the process, ``hang``
never answers.
Every call reports progress (1/2, 2/2) when the caller asked for it and logs one ``info``
line.  The ``tickets`` server also has resources (two tickets and a customer list), a
resource template ``tickets://{ticket_id}`` and a prompt ``summarise_ticket``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp import MCPError
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPDeprecationWarning

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from _serving import serve  # noqa: E402 (this directory: run as a script)
from intentgate.errors import TokenError  # noqa: E402
from intentgate.keys import PublicKeySet  # noqa: E402
from intentgate.verify import ActionTokenVerifier, SqliteJtiLedger  # noqa: E402

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
TICKETS = {"TCK-1": "Order ORD-7 arrived broken.", "TCK-2": "Where is my parcel?"}
CUSTOMERS = "alice@example.com,bob@example.com"  # what an exfiltrating agent would want


def _ticket_handlers() -> dict[str, Any]:
    """Resource and prompt handlers of the ``tickets`` server."""

    async def list_resources(ctx: Any, params: Any) -> types.ListResourcesResult:
        resources = [types.Resource(uri=f"tickets://{t}", name=t, mime_type="text/plain") for t in TICKETS]
        resources.append(types.Resource(uri="tickets://customers/all", name="customers", mime_type="text/csv"))
        return types.ListResourcesResult(resources=resources)

    async def list_templates(ctx: Any, params: Any) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=[
            types.ResourceTemplate(uri_template="tickets://{ticket_id}", name="ticket", mime_type="text/plain")
        ])

    async def read_resource(ctx: Any, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        key = params.uri.removeprefix("tickets://")
        text = CUSTOMERS if key == "customers/all" else TICKETS.get(key)
        if text is None:
            raise MCPError(types.INVALID_PARAMS, f"no resource {params.uri}")
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=params.uri, text=text, mime_type="text/plain")]
        )

    async def list_prompts(ctx: Any, params: Any) -> types.ListPromptsResult:
        return types.ListPromptsResult(prompts=[types.Prompt(
            name="summarise_ticket", description="Summarise a ticket",
            arguments=[types.PromptArgument(name="ticket_id", required=True)],
        )])

    async def get_prompt(ctx: Any, params: types.GetPromptRequestParams) -> types.GetPromptResult:
        ticket = (params.arguments or {}).get("ticket_id", "")
        return types.GetPromptResult(messages=[types.PromptMessage(
            role="user", content=types.TextContent(type="text", text=f"Summarise {ticket}: {TICKETS.get(ticket)}"),
        )])

    return {"on_list_resources": list_resources, "on_list_resource_templates": list_templates,
            "on_read_resource": read_resource, "on_list_prompts": list_prompts, "on_get_prompt": get_prompt}


def _record(upstream: str, tool: str, arguments: dict[str, Any], token: str | None, *, jti: str | None = None,
            refused: str | None = None) -> None:
    """Append one line to ``RECORD_CALLS`` and fsync it: on disk before the call has any effect."""
    path = os.environ.get("RECORD_CALLS")
    if not path or not token:
        return
    line = json.dumps({"upstream": upstream, "tool": tool, "arguments": arguments, "token": token, "jti": jti,
                       "refused": refused}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())  # one write of one line under O_APPEND: lines never interleave
        os.fsync(fd)
    finally:
        os.close(fd)


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
        if token and os.environ.get("CAPTURE_TOKENS"):  # plays a sniffed channel in replay tests
            with open(os.environ["CAPTURE_TOKENS"], "a") as capture:
                capture.write(token + "\n")
        verified = None
        if verifier is not None:
            try:
                claims = await verifier.verify_and_consume(
                    token or "", tool=f"{name}.{params.name}", arguments=args, audience=name, ledger=ledger
                )
                verified = claims.jti
            except TokenError as exc:
                _record(name, params.name, args, token, refused=exc.code.value)
                return types.CallToolResult(
                    content=[types.TextContent(type="text", text=f"refused: {exc.code.value}")],
                    structured_content={"refused": exc.code.value}, is_error=True,
                )
        _record(name, params.name, args, token, jti=verified)
        await ctx.session.report_progress(1, 2, "half way")
        await ctx.session.report_progress(2, 2, "done")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            await ctx.session.send_log_message("info", f"served {params.name}", name, related_request_id=ctx.request_id)
        http_request = ctx.request if hasattr(ctx.request, "headers") else None
        echo = {
            "upstream": name, "tool": params.name, "arguments": args, "had_token": bool(token),
            "verified_jti": verified, "meta_keys": sorted(meta),
            "has_authorization": bool(http_request and http_request.headers.get("authorization")),
            "bearer_is_token": bool(http_request and token
                                    and http_request.headers.get("authorization") == f"Bearer {token}"),
            "x_api_key_sha256": hashlib.sha256(http_request.headers.get("x-api-key", "").encode()).hexdigest()
            if http_request else None,
            # proves a brokered secret arrived without ever echoing it
            "brokered_secret_sha256": hashlib.sha256(os.environ.get("BROKERED_SECRET", "").encode()).hexdigest(),
        }
        for key in ("traceparent", "tracestate", "baggage"):  # W3C trace context (SEP-414's keys), when any came
            if key in meta:
                echo[key] = meta[key]
        if os.environ.get("RESULT_PADDING"):  # plays an upstream answering a huge result
            echo["padding"] = "x" * int(os.environ["RESULT_PADDING"])
        return types.CallToolResult(  # RESULT_META plays an upstream putting keys of its choosing in _meta
            content=[types.TextContent(type="text", text=json.dumps(echo))], structured_content=echo,
            meta=json.loads(os.environ["RESULT_META"]) if os.environ.get("RESULT_META") else None,
        )

    extra = _ticket_handlers() if name == "tickets" else {}
    return Server(name, on_list_tools=list_tools, on_call_tool=call_tool, **extra)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True, choices=sorted(TOOLS))
    parser.add_argument("--http", type=int, metavar="PORT", help="serve Streamable HTTP on 127.0.0.1:PORT/mcp")
    args = parser.parse_args()
    await serve(build(args.name), args.http)


if __name__ == "__main__":
    asyncio.run(main())
