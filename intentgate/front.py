"""The MCP front: agents connect here; every ``tools/call`` goes through the decision core.

A low-level ``mcp.server.Server`` with a dynamic tool list: the tools of every upstream that
the calling agent's intents use, as ``<upstream>__<tool>``, each with two extra optional
arguments (``intent_task``, ``intent_step``) for clients that cannot set ``_meta``; plus the
gateway's own ``intentgate__list_intents``, ``intentgate__begin_task`` and
``intentgate__end_task``.  An allowed call is forwarded with its action token; anything else
comes back as a tool error whose structured content names the decision and its reasons.
Internal error text never reaches an agent.  Progress an upstream reports for a call goes to
the agent that made it, and so do its log messages (see ``upstreams``).  What it asks of
the client goes to that agent too (``asks``); an agent on 2026-07-28 gets it as the gateway's
own ``input_required`` and continues the call with its answers (``roundtrips``).

Resources, prompts, completion, the log level, subscriptions and what upstreams notify are
served by ``passthrough`` (namespaced like tools, every read decided by the Rego policy).

Every request is handled in its own span when tracing is on (``tracing``), a child of the
agent's span if it sent a W3C trace context; off, it is handled with no trace context at all.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import warnings
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import mcp_types as types
from mcp import MCPError
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp.server.lowlevel import NotificationOptions, Server
from mcp_types import LOG_LEVEL_META_KEY
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from opentelemetry import trace

from .asks import AskRelay, refuse_unattributed
from .bindings import keep_values, result_document
from .canonical import arguments_sha256, canonical_json
from .connections import AgentConnection, Connections, level_allows
from .decide import CallRequest, TaskStarted, Verdict
from .errors import GatewayError, ReasonCode, TaskError, TokenError, reason
from .identity import AgentIdentity
from .listens import Listens
from .passthrough import SEP, Passthrough, clean_result, verdict_payload
from .roundtrips import CallState, RequestStates, ask_input_requests, continue_call, issue_state, new_state
from .runtime import Runtime
from .store import KeptValues
from .tracing import detached, failed
from .upstreams import Upstream, UpstreamError, UpstreamPool

__all__ = ["META_STEP", "META_TASK", "META_TOKEN", "Front"]

log = logging.getLogger("intentgate.front")

META_TASK = "intentgate/task"
META_STEP = "intentgate/step"
META_TOKEN = "intentgate/token"
META_DECISION = "intentgate/decision"  # on a refusal: the decision, where no upstream can put one
ARG_TASK = "intent_task"
ARG_STEP = "intent_step"
GATEWAY = "intentgate"

_CONTEXT_PROPERTIES = {
    ARG_TASK: {"type": "string", "description": "IntentGate task id (from intentgate__begin_task)"},
    ARG_STEP: {"type": "string", "description": "the intent's workflow step this call performs"},
}

_GATEWAY_TOOLS = [
    types.Tool(
        name=f"{GATEWAY}{SEP}list_intents",
        description="List the intents this agent may declare, with their parameters and workflow steps.",
        input_schema={"type": "object", "properties": {}, "additionalProperties": False},
    ),
    types.Tool(
        name=f"{GATEWAY}{SEP}begin_task",
        description=(
            "Begin a task; returns the task id, its expiry and the start steps. Give the task grant your "
            "host handed you ({grant}), or, for an intent you may begin yourself, {intent, params, reason}. "
            "Tasks begun for you by a task issuer need no call: you are given their task id."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "grant": {"type": "string", "description": "a task grant (JWT) from your host or orchestrator"},
                "intent": {"type": "string"},
                "params": {"type": "object"},
                "reason": {"type": "string", "description": "why the task is needed (free text)"},
            },
            "additionalProperties": False,
        },
    ),
    types.Tool(
        name=f"{GATEWAY}{SEP}end_task",
        description="End a task; every token it was issued and not yet used is revoked.",
        input_schema={
            "type": "object",
            "properties": {"task": {"type": "string"}},
            "required": ["task"],
            "additionalProperties": False,
        },
    ),
]

Identify = Callable[[Any], Awaitable[AgentIdentity]]


def _holds_asks(ctx: Any) -> bool:
    """The agent is on 2026-07-28 and cannot be sent a request: asks go back in the call's result."""
    session = getattr(ctx, "session", None)
    return (getattr(ctx, "protocol_version", None) in MODERN_PROTOCOL_VERSIONS
            and not getattr(session, "can_send_request", True))


def _ask_refused(verdict: Verdict, ask: Verdict, structured: bool) -> types.CallToolResult:
    """A refused ask ended the call (2026-07-28): the agent is told which ask and why."""
    return _error_result({**verdict_payload(verdict), "outcome": "allow", "reasons": ask.reasons,
                          "ask_decision_id": ask.decision_id,
                          "explanation": f"the tool asked the client for something the gateway refused "
                                         f"({ask.explanation}); the tool could not go on"},
                         structured=structured)


def _error_result(payload: dict[str, Any], *, structured: bool = True) -> types.CallToolResult:
    """A refusal (or a failure after an allow) every client can read: the text says why, what
    was decided and what may come next; ``_meta["intentgate/decision"]`` holds it all; and
    the structured content too, unless the tool declares an ``outputSchema`` (``structured``
    False), which a refusal would not match and schema-validating clients would reject."""
    nexts = payload.get("allowed_next") or []
    text = f"{payload.get('explanation', 'refused')} (decision {payload.get('decision_id') or '-'}; " + (
        ", ".join(payload.get("reasons", [])) or "no reason"
    ) + ")" + (f"; allowed next: {', '.join(nexts)}" if nexts else "")
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)], structured_content=payload if structured else None,
        is_error=True, meta={META_DECISION: payload},
    )


def _listed_schema(tool: types.Tool) -> dict[str, Any]:
    """An upstream tool's input schema as agents see it: with the task and step arguments."""
    schema = dict(tool.input_schema or {"type": "object"})
    schema["properties"] = {**schema.get("properties", {}), **_CONTEXT_PROPERTIES}
    return schema


def _ok_result(payload: dict[str, Any]) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=json.dumps(payload))], structured_content=payload
    )


def _kept_values(task_id: str, step: str, result: types.CallToolResult,
                 keep: dict[str, tuple[str, ...]]) -> KeptValues:
    """The values at ``keep``'s paths in a result (its structured content, or JSON text)."""
    texts = [c.text for c in result.content if isinstance(c, types.TextContent)]
    values, dropped = keep_values(result_document(result.structured_content, texts), keep)
    return KeptValues(task_id, step, values, dropped)


def _forward_meta(ctx: Any, meta: dict[str, Any], token: str, conn: AgentConnection) -> dict[str, Any]:
    """What goes upstream in ``_meta``: the action token, and the agent's log-level opt-in.

    Nothing else of the agent's ``_meta`` is forwarded.  An agent on a handshake-era
    session has no per-request opt-in: it gets what it asked for with ``logging/setLevel``,
    else ``info`` and above.
    """
    forward: dict[str, Any] = {META_TOKEN: token}
    level = meta.get(LOG_LEVEL_META_KEY)
    if level is None and getattr(ctx, "protocol_version", None) not in MODERN_PROTOCOL_VERSIONS:
        level = conn.log_level or "info"
    if isinstance(level, str):
        forward[LOG_LEVEL_META_KEY] = level
    return forward


def _progress_sink(ctx: Any, meta: dict[str, Any]) -> Any:
    """Relay upstream progress to the agent, when the agent asked for progress on this call."""
    if meta.get("progress_token") is None:
        return None

    async def relay(progress: float, total: float | None, message: str | None) -> None:
        await ctx.session.report_progress(progress, total, message)

    return relay


def _log_sink(ctx: Any, conn: AgentConnection) -> Any:
    async def relay(params: types.LoggingMessageNotificationParams) -> None:
        if not level_allows(conn.log_level, params.level):  # the agent's logging/setLevel
            return
        with warnings.catch_warnings():  # logging is deprecated in 2026-07-28, still served
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            await ctx.session.send_log_message(
                params.level, params.data, params.logger, related_request_id=ctx.request_id
            )

    return relay


H = TypeVar("H")


def _note_decision(span: Any, decision_id: str | None, outcome: str | None, reasons: list[str] | None) -> None:
    """The decision a request ended in, on the request's span (when it records)."""
    if span.is_recording():
        span.set_attributes({k: v for k, v in (("intentgate.decision_id", decision_id), ("intentgate.outcome", outcome),
                                               ("intentgate.reasons", reasons)) if v is not None})


def _boundary(handler: Callable[[Any, Any], Awaitable[H]]) -> Callable[[Any, Any], Awaitable[H]]:
    """The one error boundary of every MCP handler: what reaches an agent is a JSON-RPC error
    with a reason code (and the decision id when there is one), never internal text."""

    @functools.wraps(handler)
    async def guarded(ctx: Any, params: Any) -> H:
        try:
            return await handler(ctx, params)
        except MCPError:
            raise  # made here for the agent: a decision's payload or a short, secret-free message
        except GatewayError as exc:
            raise MCPError(types.INVALID_REQUEST, "refused", {"reasons": [exc.code.value],
                                                              "decision_id": exc.decision_id}) from None
        except Exception:  # noqa: BLE001 - never let internal error text reach an agent
            log.exception("%s failed", getattr(handler, "__name__", "handler").lstrip("_"))
            raise MCPError(types.INTERNAL_ERROR, "internal error",
                           {"reasons": [ReasonCode.INTERNAL_ERROR.value]}) from None

    return guarded


class Front:
    """Serves one gateway (runtime + upstreams) to agents over MCP."""

    def __init__(self, runtime: Runtime, pool: UpstreamPool, identify: Identify) -> None:
        self.rt = runtime
        self.pool = pool
        self.identify = identify
        self.connections = Connections()
        self.listens = Listens(runtime.config.front.max_sessions_per_agent)
        self.passthrough = Passthrough(runtime, pool, self.connections, self.listens, self._agent)
        with warnings.catch_warnings():  # logging/setLevel is deprecated in 2026-07-28, still served
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            self.server: Server[Any] = Server(
                "intentgate",
                version="0.1.0",
                instructions=(
                    "Tools are gated by IntentGate. Begin a task with intentgate__begin_task, then call tools "
                    "with the task id and workflow step, in _meta (intentgate/task, intentgate/step) or in the "
                    "intent_task / intent_step arguments."
                ),
                on_list_tools=self._serving("tools/list", self._list_tools),
                on_call_tool=self._serving("tools/call", self._call_tool),
                on_list_resources=self._serving("resources/list", self.passthrough.list_resources),
                on_list_resource_templates=self._serving("resources/templates/list", self.passthrough.list_resource_templates),
                on_read_resource=self._serving("resources/read", self.passthrough.read_resource),
                on_subscribe_resource=self._serving("resources/subscribe", self.passthrough.subscribe),
                on_unsubscribe_resource=self._serving("resources/unsubscribe", self.passthrough.unsubscribe),
                on_list_prompts=self._serving("prompts/list", self.passthrough.list_prompts),
                on_get_prompt=self._serving("prompts/get", self.passthrough.get_prompt),
                on_completion=self._serving("completion/complete", self.passthrough.complete),
                on_set_logging_level=self._serving("logging/setLevel", self.passthrough.set_level),
                on_subscriptions_listen=self._serving("subscriptions/listen", self.passthrough.listen),
                get_tool_input_schema=self._input_schema,
            )
        # agents are told when an upstream's tools, resources or prompts change (followed in upstreams)
        self.server.create_initialization_options = functools.partial(  # type: ignore[method-assign]
            self.server.create_initialization_options,
            notification_options=NotificationOptions(prompts_changed=True, resources_changed=True, tools_changed=True))
        self.states = RequestStates(runtime.keys, runtime.clock, runtime.config.front.request_state_ttl_seconds)
        for up in pool.upstreams.values():
            up.unattributed = self._refuse_unattributed
            up.notified = self.passthrough.upstream_notified
            up.tracing = runtime.tracing

    def _serving(self, method: str, handler: Callable[[Any, Any], Awaitable[H]]) -> Callable[[Any, Any], Awaitable[H]]:
        """``handler`` behind the error boundary, in the request's span when tracing; untraced, with
        no trace context at all (the SDK makes the agent's current: it would go upstream)."""
        guarded = _boundary(handler)
        tracing = self.rt.tracing
        if not tracing.enabled:
            async def untraced(ctx: Any, params: Any) -> H:
                with detached():
                    return await guarded(ctx, params)

            return untraced

        async def traced(ctx: Any, params: Any) -> H:
            with tracing.request(method, ctx, params) as span:
                try:
                    result = await guarded(ctx, params)
                except MCPError as exc:  # its message is what the agent gets: no internal text
                    failed(span, str(exc.error.code), exc.error.message)
                    span.set_attribute("rpc.response.status_code", str(exc.error.code))
                    raise
                if isinstance(result, types.CallToolResult) and result.is_error:
                    failed(span, "tool_error")
                    refusal = (result.meta or {}).get(META_DECISION)
                    if isinstance(refusal, dict):
                        _note_decision(span, refusal.get("decision_id"), refusal.get("outcome"), refusal.get("reasons"))
                return result

        return traced

    async def _refuse_unattributed(self, upstream: str, action: Any, kind: Any, in_flight: int) -> types.ErrorData:
        return await refuse_unattributed(self.rt.decider, upstream, action, kind, in_flight)

    async def _agent(self, ctx: Any) -> AgentIdentity:
        try:
            return await self.identify(ctx)
        except GatewayError as exc:
            raise MCPError(types.INVALID_REQUEST, "no valid workload identity",
                           {"reasons": [ReasonCode.UNAUTHENTICATED.value]}) from exc

    # ----- tools/list ----------------------------------------------------------------
    async def _list_tools(self, ctx: Any, params: Any) -> types.ListToolsResult:
        agent = await self._agent(ctx)
        allowed = {tool for intent in self.rt.intents.for_agent(agent.id) for tool in intent.tools()}
        tools = list(_GATEWAY_TOOLS)
        for up in await self.passthrough.visible(agent):
            for tool in up.tools:
                if f"{up.name}.{tool.name}" not in allowed:
                    continue
                name = f"{up.name}{SEP}{tool.name}"
                if len(name) > 64:
                    log.warning("tool %s skipped: exposed name longer than 64 characters", name)
                    continue
                tools.append(tool.model_copy(update={"name": name, "input_schema": _listed_schema(tool)}))
        listed, cursor = self.passthrough.page(tools, params, lambda t: t.name, "tools/list")
        return types.ListToolsResult(tools=listed, next_cursor=cursor)

    def _input_schema(self, name: str) -> dict[str, Any] | None:
        """The input schema ``tools/list`` shows for ``name`` (the SDK validates ``Mcp-Param-*``
        headers against it); without it the SDK would run the whole listing on every call."""
        upstream_name, _, tool_name = name.partition(SEP)
        if upstream_name == GATEWAY:
            return next((dict(t.input_schema) for t in _GATEWAY_TOOLS if t.name == name), None)
        upstream = self.pool.get(upstream_name)
        tool = next((t for t in upstream.tools if t.name == tool_name), None) if upstream is not None else None
        return _listed_schema(tool) if tool is not None else None

    # ----- tools/call ----------------------------------------------------------------
    async def _call_tool(self, ctx: Any, params: types.CallToolRequestParams
                         ) -> types.CallToolResult | types.InputRequiredResult:
        try:
            agent = await self.identify(ctx)
        except GatewayError:
            return _error_result({"outcome": "deny", "reasons": [ReasonCode.UNAUTHENTICATED.value],
                                  "explanation": "no valid workload identity", "decision_id": None})
        try:
            upstream, _, tool = params.name.partition(SEP)
            if upstream == GATEWAY:
                return await self._gateway_tool(agent, tool, params.arguments or {})
            return await self._gated_call(ctx, agent, upstream, tool, params)
        except Exception:  # noqa: BLE001 - never let internal error text reach an agent
            log.exception("tools/call failed")
            return _error_result({"outcome": "deny", "reasons": [ReasonCode.INTERNAL_ERROR.value],
                                  "explanation": "internal error", "decision_id": None})

    async def _refuse_if_too_large(self, request: CallRequest, *, structured: bool = True
                                   ) -> types.CallToolResult | None:
        """Arguments over ``front.max_argument_bytes``: a recorded deny, the arguments not stored."""
        size = len(json.dumps(request.untrusted_arguments, default=str))
        if size <= self.rt.config.front.max_argument_bytes:
            return None
        verdict = await self.rt.decider.refuse(request, ReasonCode.PAYLOAD_TOO_LARGE, str(size), keep_arguments=False)
        return _error_result(verdict_payload(verdict), structured=structured)

    async def _gateway_tool(self, agent: AgentIdentity, name: str, args: dict[str, Any]) -> types.CallToolResult:
        decider = self.rt.decider
        request = CallRequest(agent=agent, upstream=GATEWAY, tool=name[:128] or "-", untrusted_arguments=args)
        if (refused := await self._refuse_if_too_large(request)) is not None:
            return refused
        try:  # task parameters go into the audit log: NaN or a huge integer cannot
            canonical_json(args)
        except Exception:  # noqa: BLE001 - whatever rfc8785 refuses
            verdict = await decider.refuse(request, ReasonCode.MALFORMED_REQUEST, "arguments", keep_arguments=False)
            return _error_result(verdict_payload(verdict))
        try:
            if name == "list_intents":
                intents = [
                    {
                        "name": i.name, "version": i.version, "description": i.description, "params": i.params,
                        "start": i.start, "ttl_seconds": i.ttl_seconds, "begin": self.rt.intents.begin_modes(i),
                        "steps": {s: {"tool": st.tool.replace(".", SEP, 1), "next": st.next,
                                      "description": st.description, "approval": st.approval}
                                  for s, st in i.steps.items()},
                    }
                    for i in self.rt.intents.for_agent(agent.id)
                ]
                return _ok_result({"intents": intents})
            if name == "begin_task":
                started = await self._begin_task(agent, args)
                return _ok_result({"task": started.task_id, "intent": started.intent,
                                   "version": started.intent_version, "expires_at": started.expires_at,
                                   "start_steps": started.start_steps, "decision_id": started.decision_id,
                                   "issuer": started.issuer})
            if name == "end_task":
                if not isinstance(args.get("task"), str):  # recorded like any refused call
                    verdict = await decider.refuse(request, ReasonCode.INVALID_PARAMS, "task")
                    return _error_result(verdict_payload(verdict))
                ended = await decider.end_task(agent, args["task"])
                return _ok_result({"task": ended.task_id, "status": ended.status,
                                   "revoked_tokens": ended.revoked_tokens, "decision_id": ended.decision_id})
        except GatewayError as exc:
            return _error_result({"outcome": "deny", "reasons": [exc.code.value], "explanation": exc.message,
                                  "decision_id": exc.decision_id})
        verdict = await decider.refuse(request, ReasonCode.UNKNOWN_TOOL, f"{GATEWAY}{SEP}{name}"[:128])
        return _error_result(verdict_payload(verdict))

    async def _begin_task(self, agent: AgentIdentity, args: dict[str, Any]) -> TaskStarted:
        """``intentgate__begin_task``: from a task grant, or (where the intent allows it) by the agent."""
        decider = self.rt.decider
        if "grant" in args:
            if set(args) != {"grant"}:
                raise await decider.refuse_begin(agent, ReasonCode.INVALID_PARAMS,
                                                 "give either a grant or intent, params and reason, not both")
            try:
                grant = self.rt.task_issuers.verify_grant(args["grant"], agent=agent.id)
            except TaskError as exc:  # forged, expired, for another agent: recorded, the detail kept
                log.info("task grant refused: %s", exc.message, extra={"code": exc.code.value})
                raise await decider.refuse_begin(agent, exc.code, "the task grant was refused") from exc
            return await decider.begin_task(agent, grant.intent, grant.params, grant.reason, grant=grant)
        params = args.get("params")
        if not isinstance(args.get("intent"), str) or not isinstance(params, dict):
            raise await decider.refuse_begin(agent, ReasonCode.INVALID_PARAMS,
                                             "begin_task needs a grant, or intent (string) and params (object)",
                                             intent=args.get("intent") if isinstance(args.get("intent"), str) else None)
        return await decider.begin_task(agent, args["intent"], params, args.get("reason", ""))

    async def _gated_call(
        self, ctx: Any, agent: AgentIdentity, upstream_name: str, tool: str, params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        decider = self.rt.decider
        untrusted_args = dict(params.arguments or {})
        meta = dict(params.meta or {})
        # task context: _meta first, else the two injected arguments (always stripped)
        arg_task, arg_step = untrusted_args.pop(ARG_TASK, None), untrusted_args.pop(ARG_STEP, None)
        task_id = meta.get(META_TASK, arg_task)
        step = meta.get(META_STEP, arg_step)
        request = CallRequest(
            agent=agent,
            task_id=task_id if isinstance(task_id, str) else None,
            step=step if isinstance(step, str) else None,
            upstream=upstream_name[:64] or "-",
            tool=tool[:128] or "-",
            untrusted_arguments=untrusted_args,
            burn_on_commit=True,  # forwarded right here, or not at all
        )
        upstream = self.pool.get(upstream_name) if tool else None
        if upstream is None:
            verdict = await decider.refuse(request, ReasonCode.UNKNOWN_TOOL, params.name[:128])
            return _error_result(verdict_payload(verdict))
        structured = not any(t.name == tool and t.output_schema for t in upstream.tools)
        if (refused := await self._refuse_if_too_large(request, structured=structured)) is not None:
            return refused
        if params.request_state is not None:  # a 2026-07-28 agent answers what the tool asked
            return await self._continue(ctx, agent, upstream, request, params, meta, structured)

        verdict = await decider.decide(request)
        if not verdict.forward:
            return _error_result(verdict_payload(verdict), structured=structured)
        return await self._forward(ctx, agent, upstream, request, verdict, meta, structured)

    async def _continue(self, ctx: Any, agent: AgentIdentity, upstream: Upstream, request: CallRequest,
                        params: types.CallToolRequestParams, meta: dict[str, Any], structured: bool,
                        ) -> types.CallToolResult | types.InputRequiredResult:
        """The continuation of a call answered with ``input_required`` (see ``roundtrips``): checked
        against its sealed state, recorded, and forwarded with the answers under a fresh token."""
        try:
            digest: str | None = arguments_sha256(request.untrusted_arguments)
        except Exception:  # noqa: BLE001 - not canonical JSON: cannot be the arguments the state binds
            digest = None
        state, verdict = await continue_call(
            self.rt.decider, self.states, identity=agent, upstream=request.upstream, tool=request.tool,
            arguments_sha256=digest, arguments=request.untrusted_arguments, wire_state=params.request_state or "",
            responses=params.input_responses)
        if not verdict.forward or state is None:
            return _error_result(verdict_payload(verdict), structured=structured)
        request = request.model_copy(update={"task_id": state.task_id, "step": state.step})
        return await self._forward(ctx, agent, upstream, request, verdict, meta, structured, state=state,
                                   responses=params.input_responses)

    async def _forward(self, ctx: Any, agent: AgentIdentity, upstream: Upstream, request: CallRequest,
                       verdict: Verdict, meta: dict[str, Any], structured: bool, *, state: CallState | None = None,
                       responses: types.InputResponses | None = None,
                       ) -> types.CallToolResult | types.InputRequiredResult:
        """Forward an allowed call (or its continuation), and record how it ended."""
        decider = self.rt.decider
        upstream_name, tool, untrusted_args = request.upstream, request.tool, request.untrusted_arguments
        _note_decision(trace.get_current_span(), verdict.decision_id, verdict.outcome, verdict.reasons)
        assert verdict.token is not None
        try:  # the token was burnt with the decision; check it binds exactly what goes upstream
            # (minted just now by this process: its claims are checked, its signature is not again)
            self.rt.verifier.check_minted(
                verdict.token.claims, tool=request.qualified_tool, arguments=untrusted_args, audience=upstream_name,
            )
        except TokenError as exc:
            log.error("minted token failed verification", extra={"decision_id": verdict.decision_id,
                                                                 "code": exc.code.value})
            return _error_result({**verdict_payload(verdict), "outcome": "deny",
                                  "reasons": [reason(exc.code)], "explanation": "token could not be used"},
                                 structured=structured)
        started = time.perf_counter()
        status, detail, kept = "ok", None, None
        conn = self.connections.of(ctx, agent.id)
        relay = AskRelay(decider, ctx, agent, upstream=upstream_name, tool=tool, task_id=request.task_id,
                         step=request.step, elicited=conn.elicited)
        try:
            result = await upstream.call_tool(tool, untrusted_args, _forward_meta(ctx, meta, verdict.token.token, conn),
                                              progress=_progress_sink(ctx, meta), logs=_log_sink(ctx, conn), asks=relay,
                                              decision_id=verdict.decision_id, hold_asks=_holds_asks(ctx),
                                              input_responses=responses,
                                              request_state=state.upstream_state if state is not None else None)
            size = len(result.model_dump_json(by_alias=True, exclude_none=True))
            if size > self.rt.config.front.max_result_bytes:  # the call ran; its result does not go on
                status, detail = "result_too_large", f"{size} bytes"
                log.warning("upstream result too large: %d bytes", size, extra={"decision_id": verdict.decision_id})
                return _error_result({**verdict_payload(verdict), "outcome": "allow",
                                      "reasons": [reason(ReasonCode.UPSTREAM_RESULT_TOO_LARGE, str(size))],
                                      "explanation": f"the tool ran, but its result ({size} bytes) is over the "
                                                     f"gateway's limit ({self.rt.config.front.max_result_bytes})"},
                                     structured=structured)
            if isinstance(result, types.InputRequiredResult):  # asks for a 2026-07-28 agent: in our own result
                allowed, refused = await ask_input_requests(relay, result)
                if refused is not None:
                    status, detail = "ask_refused", refused.decision_id
                    return _ask_refused(verdict, refused, structured)
                status, detail = "input_required", ",".join(d for d, _ in allowed.values()) or None
                try:
                    return await self._ask_agent(request, verdict, result, allowed, state)
                except Exception:  # noqa: BLE001 - no state issued: the agent cannot go on, and is told so
                    log.exception("request state not issued", extra={"decision_id": verdict.decision_id})
                    status, detail = "internal_error", "the request state could not be issued"
                    return _error_result({**verdict_payload(verdict), "outcome": "allow",
                                          "reasons": [ReasonCode.INTERNAL_ERROR.value],
                                          "explanation": "internal error"}, structured=structured)
            if result.is_error:
                status = "tool_error"
            elif verdict.keep and request.task_id and request.step:
                kept = _kept_values(request.task_id, request.step, result, verdict.keep)
            return clean_result(result)
        except UpstreamError as exc:
            if relay.refused is not None and exc.code is ReasonCode.UPSTREAM_ERROR:  # 2026-07-28: a refused ask ends the call
                status, detail = "ask_refused", relay.refused.decision_id
                return _ask_refused(verdict, relay.refused, structured)
            status, detail = ("timeout" if exc.code is ReasonCode.UPSTREAM_TIMEOUT else "upstream_error"), exc.message
            self.rt.metrics.upstream_error(upstream_name, exc.code)
            return _error_result({**verdict_payload(verdict), "outcome": "allow", "reasons": [exc.code.value],
                                  "explanation": exc.message}, structured=structured)
        except anyio.get_cancelled_exc_class():  # the agent cancelled (notifications/cancelled), or went away
            status, detail = "cancelled", "the call was cancelled before the upstream answered"
            raise
        finally:
            with anyio.CancelScope(shield=True):  # the outcome is written even as the call is cancelled
                await self._record_outcome(verdict, request, status, started, detail, kept)

    async def _ask_agent(self, request: CallRequest, verdict: Verdict, result: types.InputRequiredResult,
                         allowed: dict[str, Any], state: CallState | None) -> types.InputRequiredResult:
        """The upstream's allowed asks as the gateway's own ``input_required``, under a sealed state."""
        assert verdict.token is not None and request.task_id and request.step
        detail = verdict.token.claims["authorization_details"][0]
        sealed = await issue_state(self.rt.decider, self.states, new_state(
            self.states, agent=request.agent.id, task_id=request.task_id, step=request.step,
            upstream=request.upstream, tool=request.tool, arguments_sha256=detail["arguments_sha256"],
            decision_id=state.decision_id if state is not None else verdict.decision_id, asks=allowed,
            upstream_state=result.request_state, intent=detail.get("intent"),
            round_no=state.round + 1 if state is not None else 1))
        return types.InputRequiredResult(input_requests=result.input_requests or None, request_state=sealed)

    async def _record_outcome(self, verdict: Verdict, request: CallRequest, status: str, started: float,
                              detail: str | None, kept: KeptValues | None) -> None:
        self.rt.metrics.upstream_call(request.upstream, status, time.perf_counter() - started)
        with self.rt.tracing.span("intentgate.store.outcome") as span:
            if span.is_recording():
                span.set_attributes({"intentgate.decision_id": verdict.decision_id, "intentgate.call.status": status})
            try:
                if not await self.rt.store.record_outcome(
                    verdict.decision_id, at=self.rt.clock.now(), status=status,
                    latency_ms=(time.perf_counter() - started) * 1000, detail=detail, kept=kept,
                ):
                    log.warning("task %s keeps no more result values for bindings (cap reached)", request.task_id,
                                extra={"decision_id": verdict.decision_id})
            except GatewayError as exc:
                failed(span, exc.code.value)
                log.error("could not record the outcome of %s", verdict.decision_id)
