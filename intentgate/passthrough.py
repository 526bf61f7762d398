"""What the front serves besides tools: resources, prompts, completion, the log level,
subscriptions (``resources/subscribe`` from 2025-era connections, ``subscriptions/listen``
from 2026-07-28 ones) and what the upstreams notify.

Resources and prompts of the upstreams the agent's intents use are passed through,
namespaced (resource URI ``u`` of upstream ``x`` is ``x+u``, prompt ``p`` is ``x__p``); the
listings are merged and paged (``pages``).  Every read (``resources/read``, ``prompts/get``, a
completion of a prompt's or template's argument, a subscription) is decided by the Rego policy
(``reads``) and recorded; a refused read is a JSON-RPC error ``READ_DENIED`` whose data is the
decision.  What an upstream notifies goes to the agents it concerns: a resource update to the
connections and listen streams that subscribed, a list change to the agents whose intents use
that upstream, an elicitation's completion to the connection it was put to.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

import anyio
import mcp_types as types
from mcp import MCPError
from mcp.shared.subscriptions import PromptsListChanged, ResourcesListChanged, ResourceUpdated, ToolsListChanged

from .connections import Connections
from .decide import Verdict
from .errors import ReasonCode
from .identity import AgentIdentity
from .listens import Listens
from .names import RefusedName, normalise_prompt_name, normalise_uri
from .pages import page
from .reads import ReadRequest, decide_read, refuse_read
from .runtime import Runtime
from .upstreams import Upstream, UpstreamError, UpstreamPool

__all__ = ["READ_DENIED", "READ_FAILED", "SEP", "URI_SEP", "Passthrough", "clean_result", "verdict_payload"]

log = logging.getLogger("intentgate.front")

SEP = "__"  # between an upstream's name and its tool's or prompt's
URI_SEP = "+"  # between an upstream's name and its resource's URI
META_PREFIX = "intentgate/"
SERVER_INFO_META = "io.modelcontextprotocol/serverInfo"
MAX_LISTEN_URIS = 256  # resource URIs one subscriptions/listen stream may ask for
# JSON-RPC error codes for refused reads (implementation-defined band -32000..-32019)
READ_DENIED = -32010
READ_FAILED = -32011

R = TypeVar("R", types.CallToolResult, types.GetPromptResult)
L = TypeVar("L", types.Tool, types.Resource, types.ResourceTemplate, types.Prompt)

_LIST_CHANGED: dict[type[Any], Any] = {types.ToolListChangedNotification: ToolsListChanged(),
                                       types.ResourceListChangedNotification: ResourcesListChanged(),
                                       types.PromptListChangedNotification: PromptsListChanged()}


def clean_result(result: R) -> R:
    """An upstream's result (a tool's, a prompt's) as the agent gets it: without ``_meta`` keys of the gateway's own
    namespace (an upstream cannot forge a decision) or the upstream's ``serverInfo`` stamp."""
    meta = result.meta
    if not meta:
        return result
    kept = {k: v for k, v in meta.items() if not k.startswith(META_PREFIX) and k != SERVER_INFO_META}
    return result if len(kept) == len(meta) else result.model_copy(update={"meta": kept or None})


def verdict_payload(v: Verdict) -> dict[str, Any]:
    """What the agent is told of a decision (a refusal's structured content, a read's error data)."""
    return {
        "decision_id": v.decision_id,
        "outcome": v.outcome,
        "reasons": v.reasons,
        "explanation": v.explanation,
        "allowed_next": v.allowed_next,
        "approval_id": v.approval_id,
    }


class Passthrough:
    """The front's handlers for everything but tools (see the module's docstring)."""

    def __init__(self, runtime: Runtime, pool: UpstreamPool, connections: Connections, listens: Listens,
                 agent: Callable[[Any], Awaitable[AgentIdentity]]) -> None:
        self.rt = runtime
        self.pool = pool
        self.connections = connections
        self.listens = listens
        self._agent = agent

    async def visible(self, agent: AgentIdentity) -> list[Upstream]:
        """The live upstreams the agent's intents use (those that cannot start are skipped)."""
        used = {t.partition(".")[0] for intent in self.rt.intents.for_agent(agent.id) for t in intent.tools()}
        live = []
        for name in sorted(used):
            up = self.pool.get(name)
            if up is None:
                continue
            try:
                await up.ensure()
            except UpstreamError as exc:
                log.warning("listing: %s", exc.message)
                continue
            live.append(up)
        return live

    async def _each(self, agent: AgentIdentity, what: str, fetch: Callable[[Upstream], Awaitable[list[Any]]]
                    ) -> list[tuple[Upstream, Any]]:
        found = []
        for up in await self.visible(agent):
            try:
                found.extend((up, item) for item in await fetch(up))
            except UpstreamError as exc:
                log.warning("listing %s: %s", what, exc.message)
        return found

    def page(self, items: list[L], params: Any, key: Callable[[L], str], what: str) -> tuple[list[L], str | None]:
        """One page of a merged listing, ``front.page_size`` long (see ``pages``)."""
        return page(items, getattr(params, "cursor", None), self.rt.config.front.page_size, key, what)

    async def list_resources(self, ctx: Any, params: Any) -> types.ListResourcesResult:
        agent = await self._agent(ctx)
        found = await self._each(agent, "resources", lambda up: up.list_resources())
        resources, cursor = self.page([
            r.model_copy(update={"uri": f"{up.name}{URI_SEP}{r.uri}", "name": f"{up.name}{SEP}{r.name}"})
            for up, r in found
        ], params, lambda r: r.uri, "resources/list")
        return types.ListResourcesResult(resources=resources, next_cursor=cursor)

    async def list_resource_templates(self, ctx: Any, params: Any) -> types.ListResourceTemplatesResult:
        agent = await self._agent(ctx)
        found = await self._each(agent, "resource templates", lambda up: up.list_resource_templates())
        templates, cursor = self.page([
            t.model_copy(update={"uri_template": f"{up.name}{URI_SEP}{t.uri_template}",
                                 "name": f"{up.name}{SEP}{t.name}"})
            for up, t in found
        ], params, lambda t: t.uri_template, "resources/templates/list")
        return types.ListResourceTemplatesResult(resource_templates=templates, next_cursor=cursor)

    async def list_prompts(self, ctx: Any, params: Any) -> types.ListPromptsResult:
        agent = await self._agent(ctx)
        found = await self._each(agent, "prompts", lambda up: up.list_prompts())
        prompts, cursor = self.page([p.model_copy(update={"name": f"{up.name}{SEP}{p.name}"}) for up, p in found],
                                     params, lambda p: p.name, "prompts/list")
        return types.ListPromptsResult(prompts=prompts, next_cursor=cursor)

    async def read_resource(self, ctx: Any, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        agent = await self._agent(ctx)
        upstream_name, sep, uri = params.uri.partition(URI_SEP)
        read = await self._normalised(ReadRequest(agent=agent, action="resources/read",
                                                  upstream=upstream_name[:64] or "-", name=uri if sep else params.uri),
                                      normalise_uri)
        upstream = await self._decide_read(read, bool(sep), ReasonCode.UNKNOWN_RESOURCE)
        result = await self._forward_read(read, upstream.read_resource(read.name))
        contents = [c.model_copy(update={"uri": f"{upstream.name}{URI_SEP}{c.uri}"}) for c in result.contents]
        # every read is decided anew: the upstream's cache hints are not passed on (ttl 0, private)
        return types.ReadResourceResult(contents=contents)

    async def get_prompt(self, ctx: Any, params: types.GetPromptRequestParams) -> types.GetPromptResult:
        agent = await self._agent(ctx)
        upstream_name, sep, name = params.name.partition(SEP)
        read = await self._normalised(ReadRequest(
            agent=agent, action="prompts/get", upstream=upstream_name[:64] or "-", name=name if sep else params.name,
            untrusted_arguments=dict(params.arguments or {})), normalise_prompt_name)
        upstream = await self._decide_read(read, bool(sep), ReasonCode.UNKNOWN_PROMPT)
        return clean_result(await self._forward_read(read, upstream.get_prompt(read.name, params.arguments)))

    async def _normalised(self, read: ReadRequest, normalise: Callable[[str], str]) -> ReadRequest:
        """The read with its URI or prompt name in normal form; a name refused is a recorded
        ``malformed_request`` (``:uri`` or ``:prompt``)."""
        try:
            return read.model_copy(update={"name": normalise(read.name)})
        except RefusedName as exc:
            log.info("%s refused: %s", read.action, exc)
            what = "prompt" if normalise is normalise_prompt_name else "uri"
            verdict = await refuse_read(self.rt.decider, read.model_copy(update={"name": read.name[:256]}),
                                        ReasonCode.MALFORMED_REQUEST, what)
            raise MCPError(READ_DENIED, verdict.explanation, verdict_payload(verdict)) from None

    async def set_level(self, ctx: Any, params: types.SetLevelRequestParams) -> types.EmptyResult:
        """``logging/setLevel``: this connection's threshold for the upstream log lines it gets."""
        agent = await self._agent(ctx)
        self.connections.of(ctx, agent.id).log_level = params.level
        return types.EmptyResult()

    async def complete(self, ctx: Any, params: types.CompleteRequestParams) -> types.CompleteResult:
        """``completion/complete`` of a prompt's or resource template's argument: decided like a read of it."""
        agent = await self._agent(ctx)
        ref = params.ref
        if isinstance(ref, types.PromptReference):
            upstream_name, sep, name = ref.name.partition(SEP)
            kind: Literal["prompt", "resource"] = "prompt"
        else:
            upstream_name, sep, name = ref.uri.partition(URI_SEP)
            kind = "resource"
        read = await self._normalised(ReadRequest(
            agent=agent, action="completion/complete", upstream=upstream_name[:64] or "-",
            name=name if sep else (ref.name if kind == "prompt" else ref.uri), ref=kind,
            untrusted_arguments={params.argument.name: params.argument.value}),
            normalise_prompt_name if kind == "prompt" else normalise_uri)
        name = read.name
        upstream = await self._decide_read(read, bool(sep), ReasonCode.UNKNOWN_PROMPT if kind == "prompt"
                                           else ReasonCode.UNKNOWN_RESOURCE)
        upstream_ref = (types.PromptReference(type="ref/prompt", name=name) if kind == "prompt"
                        else types.ResourceTemplateReference(type="ref/resource", uri=name))
        context = params.context.arguments if params.context else None
        result = await self._forward_read(read, upstream.complete(
            upstream_ref, {"name": params.argument.name, "value": params.argument.value}, context))
        return types.CompleteResult(completion=result.completion)

    def subscribed(self, upstream: str, uri: str) -> bool:
        """Some connection (2025-era) or listen stream (2026-07-28) holds ``uri`` of ``upstream``."""
        return self.connections.subscribed(upstream, uri) or self.listens.holds(upstream, uri)

    async def _hold(self, agent: AgentIdentity, exposed_uri: str) -> tuple[Upstream, str]:
        """A subscription to ``exposed_uri``, decided like a read (and recorded); the upstream is
        subscribed to it unless someone already is.  The upstream and its own (normal) URI."""
        upstream_name, sep, uri = exposed_uri.partition(URI_SEP)
        read = await self._normalised(ReadRequest(agent=agent, action="resources/subscribe",
                                                  upstream=upstream_name[:64] or "-", name=uri if sep else exposed_uri),
                                      normalise_uri)
        upstream = await self._decide_read(read, bool(sep), ReasonCode.UNKNOWN_RESOURCE)
        await upstream.ensure()
        if not upstream.can_subscribe():
            raise MCPError(types.METHOD_NOT_FOUND, f"upstream {upstream.name!r} does not offer resource subscriptions")
        if not self.subscribed(upstream.name, read.name):
            await self._forward_read(read, upstream.subscribe(read.name))
        return upstream, read.name

    async def _let_go(self, upstream_name: str, uri: str, what: str) -> None:
        """The upstream is unsubscribed from ``uri`` once no one holds it."""
        upstream = self.pool.get(upstream_name)
        if upstream is not None and upstream.alive() and not self.subscribed(upstream_name, uri):
            try:
                await upstream.subscribe(uri, on=False)
            except UpstreamError as exc:
                log.info("unsubscribe %s: %s", what[:200], exc.message)

    async def subscribe(self, ctx: Any, params: types.SubscribeRequestParams) -> types.EmptyResult:
        """``resources/subscribe``: decided like a read; the gateway subscribes once per upstream URI and
        passes ``notifications/resources/updated`` on to the connections that subscribed."""
        agent = await self._agent(ctx)
        upstream, uri = await self._hold(agent, params.uri)
        self.connections.of(ctx, agent.id).subscriptions.add((upstream.name, uri))
        return types.EmptyResult()

    async def listen(self, ctx: Any, params: types.SubscriptionsListenRequestParams
                      ) -> types.SubscriptionsListenResult:
        """``subscriptions/listen`` (2026-07-28): each resource URI asked for is decided like a
        ``resources/subscribe`` and only those allowed are acknowledged; the stream is the SDK's
        own, on this agent's bus (see ``listens``)."""
        agent = await self._agent(ctx)
        held: list[tuple[str, str]] = []
        wanted = params.notifications.resource_subscriptions or []
        try:
            for exposed in wanted[:MAX_LISTEN_URIS]:
                try:
                    upstream, uri = await self._hold(agent, exposed)
                except MCPError as exc:  # refused (recorded), unknown, or the upstream failed: not honoured
                    log.info("listen: %s not honoured: %s", exposed[:200], exc.error.message)
                    continue
                self.listens.holding[(upstream.name, uri)] += 1
                held.append((upstream.name, uri))
            notifications = params.notifications.model_copy(update={
                "resource_subscriptions": [f"{u}{URI_SEP}{uri}" for u, uri in held] or None})
            return await self.listens.handler(agent.id)(ctx, params.model_copy(update={"notifications": notifications}))
        finally:
            with anyio.CancelScope(shield=True):  # the stream ends when the agent goes: still let go upstream
                for upstream_name, uri in held:
                    self.listens.holding[(upstream_name, uri)] -= 1
                    await self._let_go(upstream_name, uri, f"{upstream_name}{URI_SEP}{uri}")

    async def unsubscribe(self, ctx: Any, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        agent = await self._agent(ctx)
        upstream_name, _, uri = params.uri.partition(URI_SEP)
        try:
            uri = normalise_uri(uri)
        except RefusedName:
            return types.EmptyResult()  # never subscribed: nothing to undo
        self.connections.of(ctx, agent.id).subscriptions.discard((upstream_name, uri))
        await self._let_go(upstream_name, uri, params.uri)
        return types.EmptyResult()

    async def upstream_notified(self, upstream: Upstream, message: Any) -> None:
        """An upstream's notification: a resource update goes to its subscribers (each still an agent
        that may read it: checked when it subscribed), a list change to every agent that uses it, an
        elicitation's completion to the connection that elicitation was put to (none if it is unknown)."""
        if isinstance(message, types.ResourceUpdatedNotification):
            uri = message.params.uri
            targets = self.connections.subscribers(upstream.name, uri)
            note: types.ServerNotification = types.ResourceUpdatedNotification(
                params=types.ResourceUpdatedNotificationParams(uri=f"{upstream.name}{URI_SEP}{uri}"))
            if self.listens.holds(upstream.name, uri):  # streams get it only if they were allowed it
                await self.listens.publish(ResourceUpdated(uri=f"{upstream.name}{URI_SEP}{uri}"))
        elif isinstance(message, (types.ToolListChangedNotification, types.ResourceListChangedNotification,
                                  types.PromptListChangedNotification)):
            using = [i for i in self.rt.intents if upstream.name in {t.partition(".")[0] for t in i.tools()}]
            if isinstance(message, types.ToolListChangedNotification):
                self._recheck_intents(upstream, using)
            users = {i.name for i in using}

            def uses(agent: str) -> bool:
                return any(i.name in users for i in self.rt.intents.for_agent(agent))

            targets = [c for c in self.connections.all() if uses(c.agent)]
            note = type(message)()
            await self.listens.publish(_LIST_CHANGED[type(message)], [a for a in self.listens.agents() if uses(a)])
        elif isinstance(message, types.ElicitCompleteNotification):  # only to whom that elicitation was put
            key = (upstream.name, message.params.elicitation_id)
            targets = [c for c in self.connections.all() if key in c.elicitations]
            for conn in targets:
                del conn.elicitations[key]
            note = types.ElicitCompleteNotification(
                params=types.ElicitCompleteNotificationParams(elicitation_id=message.params.elicitation_id))
        else:
            return
        for conn in targets:
            if not await conn.notify(note) and isinstance(message, types.ResourceUpdatedNotification):
                conn.subscriptions.discard((upstream.name, message.params.uri))

    def _recheck_intents(self, upstream: Upstream, using: list[Any]) -> None:
        """The steps on ``upstream`` of the intents that use it, held against the tools it lists
        now (as ``check_upstreams`` does at start): each mismatch an error in the log.  Calls to a
        tool it no longer has fail upstream; the log says which intent steps will."""
        from .catalogue import Catalogue, check_against

        catalogue = Catalogue({upstream.name: list(upstream.tools)}, {}, set(self.pool.upstreams))
        for problem in check_against(using, catalogue):
            intent = self.rt.intents.get(problem.intent or "")
            step = intent.steps.get(problem.step or "") if intent is not None else None
            if step is not None and step.upstream == upstream.name:  # the other upstreams did not change
                log.error("intent does not match its upstream after its tools changed: %s", problem,
                          extra={"upstream": upstream.name, "intent": problem.intent, "step": problem.step})

    async def _decide_read(self, read: ReadRequest, namespaced: bool, unknown: ReasonCode) -> Upstream:
        """Decide and record one read; the upstream to ask, or the JSON-RPC error for the agent."""
        upstream = self.pool.get(read.upstream) if namespaced else None
        if upstream is None:
            verdict = await refuse_read(self.rt.decider, read, unknown, read.name[:128])
        else:
            verdict = await decide_read(self.rt.decider, read)
        if verdict.outcome != "allow":
            raise MCPError(READ_DENIED, verdict.explanation, verdict_payload(verdict))
        assert upstream is not None
        return upstream

    async def _forward_read(self, read: ReadRequest, request: Awaitable[Any]) -> Any:
        try:
            return await request
        except UpstreamError as exc:
            self.rt.metrics.upstream_error(read.upstream, exc.code)
            raise MCPError(READ_FAILED, exc.message, {"reasons": [exc.code.value]}) from exc

