"""A loopback adapter that lets the MCP conformance suite (which knows nothing of IntentGate)
talk to a gateway fronting the reference server: it adds the agent's bearer token, puts the
task and step (the step is named after the tool) in every ``tools/call``'s ``_meta``, and maps
names both ways (``test_x`` <-> ``conf__test_x``, ``test://u`` <-> ``conf+test://u``), hiding
the gateway's own tools and task arguments.  Everything else (Host, Origin, session ids, SSE
streams and their event ids, server-to-client requests and their answers) passes unchanged.

It is a test harness of the suite's side, not a double of anything of the gateway's: every
request still goes through the gateway's real HTTP front, identity check and decisions.

``python conformance_proxy.py --gateway http://127.0.0.1:G --port P --token JWT --task TASK``
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import uvicorn

UP = "conf"
SEP, URI_SEP = "__", "+"
HOP = {"host", "content-length", "transfer-encoding", "connection", "authorization", "accept-encoding"}


def _in(message: Any, task: str, methods: dict[Any, str]) -> Any:
    """A message from the suite, as the gateway wants it."""
    if isinstance(message, list):
        return [_in(m, task, methods) for m in message]
    if not isinstance(message, dict) or "method" not in message:
        return message
    method, params = message["method"], message.get("params") or {}
    if "id" in message:
        methods[message["id"]] = method
    if method == "tools/call":
        name = params.get("name", "")
        params = {**params, "name": f"{UP}{SEP}{name}",
                  "_meta": {**(params.get("_meta") or {}), "intentgate/task": task, "intentgate/step": name}}
    elif method in ("resources/read", "resources/subscribe", "resources/unsubscribe"):
        params = {**params, "uri": f"{UP}{URI_SEP}{params.get('uri', '')}"}
    elif method == "prompts/get":
        params = {**params, "name": f"{UP}{SEP}{params.get('name', '')}"}
    elif method == "completion/complete":
        ref = dict(params.get("ref") or {})
        if "name" in ref:
            ref["name"] = f"{UP}{SEP}{ref['name']}"
        if "uri" in ref:
            ref["uri"] = f"{UP}{URI_SEP}{ref['uri']}"
        params = {**params, "ref": ref}
    else:
        return message
    return {**message, "params": params}


def _strip(value: str, sep: str) -> str:
    prefix = f"{UP}{sep}"
    return value[len(prefix):] if value.startswith(prefix) else value


def _out(message: Any, methods: dict[Any, str]) -> Any:
    """A message from the gateway, as the suite expects it of the reference server."""
    if isinstance(message, list):
        return [_out(m, methods) for m in message]
    if not isinstance(message, dict):
        return message
    if message.get("method") == "notifications/resources/updated":
        params = message.get("params") or {}
        return {**message, "params": {**params, "uri": _strip(params.get("uri", ""), URI_SEP)}}
    result = message.get("result")
    method = methods.pop(message.get("id"), None) if "method" not in message else None
    if not isinstance(result, dict) or method is None:
        return message
    if method == "tools/list":
        tools = []
        for tool in result.get("tools", []):
            if not tool["name"].startswith(f"{UP}{SEP}"):
                continue  # the gateway's own tools
            schema = dict(tool.get("inputSchema") or {})
            schema["properties"] = {k: v for k, v in (schema.get("properties") or {}).items()
                                    if k not in ("intent_task", "intent_step")}
            tools.append({**tool, "name": _strip(tool["name"], SEP), "inputSchema": schema})
        result = {**result, "tools": tools}
    elif method == "resources/list":
        result = {**result, "resources": [{**r, "uri": _strip(r["uri"], URI_SEP), "name": _strip(r["name"], SEP)}
                                          for r in result.get("resources", [])]}
    elif method == "resources/templates/list":
        result = {**result, "resourceTemplates": [
            {**t, "uriTemplate": _strip(t["uriTemplate"], URI_SEP), "name": _strip(t["name"], SEP)}
            for t in result.get("resourceTemplates", [])]}
    elif method == "resources/read":
        result = {**result, "contents": [{**c, "uri": _strip(c["uri"], URI_SEP)} for c in result.get("contents", [])]}
    elif method == "prompts/list":
        result = {**result, "prompts": [{**p, "name": _strip(p["name"], SEP)} for p in result.get("prompts", [])]}
    return {**message, "result": result}


def app(gateway: str, token: str, task: str) -> Any:
    client = httpx2.AsyncClient(timeout=httpx2.Timeout(60, read=300))
    methods: dict[Any, str] = {}

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"] if k.decode().lower() not in HOP}
        headers["Authorization"] = f"Bearer {token}"
        host = next((v.decode() for k, v in scope["headers"] if k == b"host"), None)
        if host:
            headers["Host"] = host  # as the suite sent it: the gateway judges it (DNS rebinding)
        if body and "json" in headers.get("content-type", ""):
            try:
                body = json.dumps(_in(json.loads(body), task, methods)).encode()
            except ValueError:
                pass  # malformed on purpose: the gateway answers it
        path = scope["path"] + (("?" + scope["query_string"].decode()) if scope.get("query_string") else "")
        request = client.build_request(scope["method"], gateway + path, headers=headers, content=body)
        response = await client.send(request, stream=True)
        kind = response.headers.get("content-type", "")
        out_headers = [(k.encode(), v.encode()) for k, v in response.headers.items()
                       if k.lower() not in HOP | {"content-encoding"}]
        await send({"type": "http.response.start", "status": response.status_code, "headers": out_headers})
        try:
            async for chunk in _relay(response, kind, methods):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            await response.aclose()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return asgi


async def _relay(response: httpx2.Response, kind: str, methods: dict[Any, str]) -> AsyncIterator[bytes]:
    if "text/event-stream" in kind:
        async for line in response.aiter_lines():
            if line.startswith("data:") and line[5:].strip():
                try:
                    line = "data: " + json.dumps(_out(json.loads(line[5:]), methods))
                except ValueError:
                    pass
            yield (line + "\n").encode()
    elif "json" in kind:
        raw = await response.aread()
        try:
            yield json.dumps(_out(json.loads(raw), methods)).encode()
        except ValueError:
            yield raw
    else:
        async for chunk in response.aiter_raw():
            yield chunk


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--task", required=True)
    ns = parser.parse_args()
    uvicorn.run(app(ns.gateway, ns.token, ns.task), host="127.0.0.1", port=ns.port, log_level="warning")
