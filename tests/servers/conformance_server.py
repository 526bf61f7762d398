"""A reference MCP server implementing what the official conformance suite's server scenarios
(`@modelcontextprotocol/conformance`) call: tools ``test_*``, resources ``test://...``, prompts
``test_*``, completion, logging and resource subscriptions.  Written here with the SDK's
low-level server, for the conformance test (tests/test_conformance.py) and the protocol tests.

``python conformance_server.py`` serves over stdio; ``--port N`` over Streamable HTTP on
127.0.0.1 (DNS-rebinding protection on, loopback only), which the suite scores directly.
``test://watched-resource`` changes on every ``resources/subscribe`` (an update is sent to the
subscriber right after it subscribes); calling the tool ``test_change_tools`` adds a tool
``test_added_tool`` (and removes the tool its ``retire`` argument names) and sends
``notifications/tools/list_changed``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
import warnings
from typing import Any

import anyio
import mcp_types as types
from mcp import MCPError
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp.shared.message import ServerMessageMetadata

PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d49444154789c6360000002"
    "0001e221bc330000000049454e44ae426082")).decode()
WAV = base64.b64encode(b"RIFF$\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00D\xac\x00\x00\x88X\x01\x00"
                       b"\x02\x00\x10\x00data\x00\x00\x00\x00").decode()
EMPTY: dict[str, Any] = {"type": "object", "properties": {}}

TOOLS: dict[str, tuple[str, dict[str, Any]]] = {
    "test_simple_text": ("Returns simple text content", EMPTY),
    "test_image_content": ("Returns image content", EMPTY),
    "test_audio_content": ("Returns audio content", EMPTY),
    "test_embedded_resource": ("Returns an embedded resource", EMPTY),
    "test_multiple_content_types": ("Returns text, image and resource content", EMPTY),
    "test_tool_with_logging": ("Sends log messages while it runs", EMPTY),
    "test_tool_with_progress": ("Reports progress while it runs", EMPTY),
    "test_error_handling": ("Always fails with a tool error", EMPTY),
    "test_sampling": ("Asks the client's model", {"type": "object", "properties": {"prompt": {"type": "string"}}}),
    "test_elicitation": ("Asks the user", {"type": "object", "properties": {"message": {"type": "string"}}}),
    "test_elicitation_sep1034_defaults": ("Asks the user, with defaults", EMPTY),
    "test_elicitation_sep1330_enums": ("Asks the user, with enum fields", EMPTY),
    "test_reconnection": ("Answers after a short pause", EMPTY),
    "test_change_tools": ("Adds a tool (and retires the one named in `retire`) and says so",
                          {"type": "object", "properties": {"retire": {"type": "string"}}}),
    "json_schema_2020_12_tool": ("Takes a JSON Schema 2020-12 input", {
        "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
        "$defs": {"address": {"type": "object", "properties": {"street": {"type": "string"},
                                                               "city": {"type": "string"}}}},
        "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
        "additionalProperties": False,
    }),
}
ADDED = {"test_added_tool": ("Appears after test_change_tools", EMPTY)}

ELICIT_DEFAULTS = {"type": "object", "properties": {
    "name": {"type": "string", "description": "User name", "default": "John Doe"},
    "age": {"type": "integer", "description": "User age", "default": 30},
    "score": {"type": "number", "description": "User score", "default": 95.5},
    "status": {"type": "string", "description": "User status", "enum": ["active", "inactive", "pending"],
               "default": "active"},
    "verified": {"type": "boolean", "description": "Verification status", "default": True},
}}
ELICIT_ENUMS = {"type": "object", "properties": {
    "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
    "titledSingle": {"type": "string", "oneOf": [{"const": "value1", "title": "First"},
                                                  {"const": "value2", "title": "Second"}]},
    "legacyEnum": {"type": "string", "enum": ["opt1", "opt2"], "enumNames": ["Option One", "Option Two"]},
    "untitledMulti": {"type": "array", "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
    "titledMulti": {"type": "array", "items": {"anyOf": [{"const": "value1", "title": "First"},
                                                         {"const": "value2", "title": "Second"}]}},
}}

RESOURCES = [
    types.Resource(uri="test://static-text", name="static-text", mime_type="text/plain"),
    types.Resource(uri="test://static-binary", name="static-binary", mime_type="image/png"),
    types.Resource(uri="test://watched-resource", name="watched-resource", mime_type="text/plain"),
    types.Resource(uri="test://example-resource", name="example-resource", mime_type="text/plain"),
]
TEMPLATE = types.ResourceTemplate(uri_template="test://template/{id}/data", name="template", mime_type="application/json")
PROMPTS = [
    types.Prompt(name="test_simple_prompt", description="A prompt without arguments"),
    types.Prompt(name="test_prompt_with_arguments", description="A prompt with two arguments", arguments=[
        types.PromptArgument(name="arg1", required=True), types.PromptArgument(name="arg2", required=True)]),
    types.Prompt(name="test_prompt_with_embedded_resource", description="A prompt embedding a resource",
                 arguments=[types.PromptArgument(name="resourceUri", required=True)]),
    types.Prompt(name="test_prompt_with_image", description="A prompt with an image"),
]


def text(t: str) -> types.TextContent:
    return types.TextContent(type="text", text=t)


def embedded(uri: str) -> types.EmbeddedResource:
    return types.EmbeddedResource(type="resource", resource=types.TextResourceContents(
        uri=uri, mime_type="text/plain", text=f"the content of {uri}"))


class Reference:
    def __init__(self) -> None:
        self.tools = dict(TOOLS)
        self.watched = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            self.server: Server[Any] = Server(
                "conformance-reference", version="1.0.0",
                on_list_tools=self.list_tools, on_call_tool=self.call_tool,
                on_list_resources=self.list_resources, on_list_resource_templates=self.list_templates,
                on_read_resource=self.read_resource, on_subscribe_resource=self.subscribe,
                on_unsubscribe_resource=self.unsubscribe, on_list_prompts=self.list_prompts,
                on_get_prompt=self.get_prompt, on_completion=self.complete, on_set_logging_level=self.set_level,
            )

    def options(self) -> Any:
        return self.server.create_initialization_options(
            notification_options=NotificationOptions(tools_changed=True, resources_changed=True, prompts_changed=True))

    async def list_tools(self, ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[types.Tool(name=n, description=d, input_schema=s)
                                            for n, (d, s) in self.tools.items()])

    async def ask(self, ctx: Any, request: types.ServerRequest, result_type: type[Any]) -> Any:
        return await ctx.session.send_request(
            request, result_type, metadata=ServerMessageMetadata(related_request_id=ctx.request_id))

    async def call_tool(self, ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        name, args = params.name, params.arguments or {}
        if name not in self.tools:
            raise MCPError(types.INVALID_PARAMS, f"unknown tool {name}")
        content: list[Any]
        if name == "test_simple_text":
            content = [text("This is a simple text response for testing.")]
        elif name == "test_image_content":
            content = [types.ImageContent(type="image", data=PNG, mime_type="image/png")]
        elif name == "test_audio_content":
            content = [types.AudioContent(type="audio", data=WAV, mime_type="audio/wav")]
        elif name == "test_embedded_resource":
            content = [embedded("test://embedded-resource")]
        elif name == "test_multiple_content_types":
            content = [text("Multiple content types test:"),
                       types.ImageContent(type="image", data=PNG, mime_type="image/png"),
                       embedded("test://mixed-content-resource")]
        elif name == "test_tool_with_logging":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MCPDeprecationWarning)
                for i, msg in enumerate(("Tool execution started", "Tool processing data", "Tool execution completed")):
                    await ctx.session.send_log_message("info", msg, "conformance", related_request_id=ctx.request_id)
                    await asyncio.sleep(0.02 * (i < 2))
            content = [text("Tool with logging executed successfully")]
        elif name == "test_tool_with_progress":
            for step in (0, 50, 100):
                await ctx.session.report_progress(step, 100, f"step {step}")
                await asyncio.sleep(0.02)
            content = [text("Tool with progress executed successfully")]
        elif name == "test_error_handling":
            return types.CallToolResult(content=[text("This tool intentionally returns an error for testing")],
                                        is_error=True)
        elif name == "test_sampling":
            result = await self.ask(ctx, types.CreateMessageRequest(params=types.CreateMessageRequestParams(
                messages=[types.SamplingMessage(role="user", content=text(str(args.get("prompt", "Hello"))))],
                max_tokens=100)), types.CreateMessageResult)
            sampled = result.content.text if isinstance(result.content, types.TextContent) else str(result.content)
            content = [text(f"LLM response: {sampled}")]
        elif name in ("test_elicitation", "test_elicitation_sep1034_defaults", "test_elicitation_sep1330_enums"):
            schema = {"test_elicitation": {"type": "object", "properties": {
                "username": {"type": "string"}, "email": {"type": "string"}}, "required": ["username", "email"]},
                "test_elicitation_sep1034_defaults": ELICIT_DEFAULTS,
                "test_elicitation_sep1330_enums": ELICIT_ENUMS}[name]
            result = await self.ask(ctx, types.ElicitRequest(params=types.ElicitRequestFormParams(
                message=str(args.get("message", "Please answer")), requested_schema=schema)), types.ElicitResult)
            content = [text(f"User response: action={result.action}, content={result.content}")]
        elif name == "test_reconnection":
            await asyncio.sleep(0.2)
            content = [text("Reconnection test completed successfully")]
        elif name == "test_change_tools":
            self.tools.update(ADDED)
            self.tools.pop(str(args.get("retire", "")), None)
            await ctx.session.send_tool_list_changed()
            content = [text("tools changed")]
        else:
            content = [text(f"{name} called with {sorted(args)}")]
        return types.CallToolResult(content=content)

    async def list_resources(self, ctx: Any, params: Any) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=RESOURCES)

    async def list_templates(self, ctx: Any, params: Any) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=[TEMPLATE])

    async def read_resource(self, ctx: Any, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        uri = params.uri
        if uri == "test://static-binary":
            return types.ReadResourceResult(contents=[types.BlobResourceContents(uri=uri, mime_type="image/png",
                                                                                  blob=PNG)])
        if uri.startswith("test://template/") and uri.endswith("/data"):
            ident = uri.removeprefix("test://template/").removesuffix("/data")
            return types.ReadResourceResult(contents=[types.TextResourceContents(
                uri=uri, mime_type="application/json", text=f'{{"id": "{ident}", "templateTest": true}}')])
        if uri in {r.uri for r in RESOURCES}:
            body = f"watched, version {self.watched}" if uri.endswith("watched-resource") else "This is the content of " + uri
            return types.ReadResourceResult(contents=[types.TextResourceContents(uri=uri, mime_type="text/plain",
                                                                                  text=body)])
        raise MCPError(types.INVALID_PARAMS, f"unknown resource {uri}")

    async def subscribe(self, ctx: Any, params: types.SubscribeRequestParams) -> types.EmptyResult:
        if params.uri == "test://watched-resource":
            self.watched += 1

            async def later() -> None:  # the update follows the subscription, outside any request
                await asyncio.sleep(0.1)
                await ctx.session.send_resource_updated(params.uri)

            asyncio.get_running_loop().create_task(later())
        return types.EmptyResult()

    async def unsubscribe(self, ctx: Any, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        return types.EmptyResult()

    async def list_prompts(self, ctx: Any, params: Any) -> types.ListPromptsResult:
        return types.ListPromptsResult(prompts=PROMPTS)

    async def get_prompt(self, ctx: Any, params: types.GetPromptRequestParams) -> types.GetPromptResult:
        args = params.arguments or {}
        if params.name == "test_simple_prompt":
            messages = [types.PromptMessage(role="user", content=text("This is a simple prompt for testing."))]
        elif params.name == "test_prompt_with_arguments":
            messages = [types.PromptMessage(role="user", content=text(
                f"Prompt with arguments: arg1='{args.get('arg1')}', arg2='{args.get('arg2')}'"))]
        elif params.name == "test_prompt_with_embedded_resource":
            messages = [types.PromptMessage(role="user", content=embedded(args.get("resourceUri", "test://example"))),
                        types.PromptMessage(role="user", content=text("Please process the embedded resource above."))]
        elif params.name == "test_prompt_with_image":
            messages = [types.PromptMessage(role="user", content=types.ImageContent(type="image", data=PNG,
                                                                                    mime_type="image/png")),
                        types.PromptMessage(role="user", content=text("Please analyze the image above."))]
        else:
            raise MCPError(types.INVALID_PARAMS, f"unknown prompt {params.name}")
        return types.GetPromptResult(messages=messages)

    async def complete(self, ctx: Any, params: types.CompleteRequestParams) -> types.CompleteResult:
        values = [v for v in ("paris", "park", "test-value", "testing") if v.startswith(params.argument.value[:2])]
        return types.CompleteResult(completion=types.Completion(values=values, total=len(values), has_more=False))

    async def set_level(self, ctx: Any, params: types.SetLevelRequestParams) -> types.EmptyResult:
        return types.EmptyResult()


async def serve_stdio() -> None:
    from mcp.server.stdio import stdio_server

    ref = Reference()
    async with stdio_server() as (read, write):
        await ref.server.run(read, write, ref.options())


def serve_http(port: int) -> None:
    import uvicorn
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
    from mcp.server.transport_security import TransportSecuritySettings

    ref = Reference()
    options = ref.options()
    ref.server.create_initialization_options = lambda *a, **k: options  # type: ignore[method-assign]
    loopback = ["127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.1", "localhost", "[::1]"]
    manager = StreamableHTTPSessionManager(app=ref.server, security_settings=TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=loopback,
        allowed_origins=[f"http://{h}" for h in loopback]))

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            async with manager.run():
                await send({"type": "lifespan.startup.complete"})
                await receive()
            await send({"type": "lifespan.shutdown.complete"})
            del message
            return
        await manager.handle_request(scope, receive, send)

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, help="serve Streamable HTTP on 127.0.0.1:PORT (default: stdio)")
    ns = parser.parse_args()
    if ns.port:
        serve_http(ns.port)
    else:
        anyio.run(serve_stdio)
    sys.exit(0)
