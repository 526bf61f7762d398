"""Asks: what an upstream requests of the agent's client while one of its tools runs.

An MCP server may, during a call, ask the client to sample its model
(``sampling/createMessage``), to ask its user (``elicitation/create``, form or URL mode) or
for its roots (``roots/list``).  Through the gateway such a request goes to the agent whose
call caused it, and to no one else, and only when the Rego policy allows it
(``opa/intentgate/asks.rego``: the step being called lists the kind in ``asks``); each one
is decided and recorded like a call, before the agent's client sees it.  A refused ask is
a JSON-RPC error to the upstream; the agent's call goes on and the upstream decides what
to make of the refusal.  On the 2026-07-28 protocol a refused ask ends the call instead.

How the agent is asked: on a connection that can take a server request (2025-era
protocols) the relay sends it on the agent's session.  An agent on 2026-07-28 cannot be sent
one: an upstream's ``input_required`` is answered with the gateway's own, under a request
state it seals, and the agent's second call continues the call (``roundtrips``).  A 2025-era
upstream's ask is a request the gateway cannot hold open across such round trips: asked of
a 2026-07-28 agent it is refused (``ask_unsupported``).

Which call an ask belongs to: the upstream's session is shared by every agent, so the SDK
cannot say.  On the 2026-07-28 protocol the ask comes back inside the call's own result
(``input_required``) and is driven in the call's own task: exact.  On earlier protocols it
arrives as a request of its own; it is given to the one call in flight on that upstream,
and refused (``ask_unattributed``) when several are, so that no agent is ever asked on
another's behalf (see ``upstreams``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, Literal

import mcp_types as types
from mcp.shared.message import ServerMessageMetadata
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel, ConfigDict

from .clock import iso
from .decide import Decider, Verdict, new_id
from .errors import ReasonCode
from .identity import AgentIdentity
from .reads import decide_by_policy, keep_arguments
from .store import DecisionRecord

__all__ = ["ASK_DENIED", "AskKind", "AskRelay", "AskRequest", "decide_ask", "refuse_ask", "refuse_unattributed"]

log = logging.getLogger("intentgate.asks")

AskAction = Literal["sampling/createMessage", "elicitation/create", "roots/list"]
AskKind = Literal["sampling", "elicitation", "elicitation_url", "roots"]
ASK_DENIED = -32012  # JSON-RPC error to the upstream for a refused ask (implementation-defined band)


class AskRequest(BaseModel):
    """One ask to decide on: who asks (upstream, tool), for whom (agent, task, step), what."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent: AgentIdentity
    action: AskAction
    kind: AskKind
    upstream: str
    tool: str
    task_id: str | None = None
    step: str | None = None
    request: dict[str, Any] = {}


def _record(decider: Decider, ask: AskRequest, intent: str | None) -> DecisionRecord:
    record = DecisionRecord(
        id=new_id("dec"), at=decider.clock.now(), kind=ask.action, agent=ask.agent.id, intent=intent,
        task_id=ask.task_id, step=ask.step, upstream=ask.upstream[:64], tool=ask.tool[:256], outcome="deny",
        reasons=[], intents_revision=decider.intents.revision,
    )
    keep_arguments(decider, record, ask.request)
    return record


def policy_input(decider: Decider, ask: AskRequest, intent: str | None, now: float) -> dict[str, Any]:
    return {
        "action": ask.action,
        "agent": {"id": ask.agent.id, "claims": ask.agent.claims},
        "intent": {"name": intent},
        "task": {"id": ask.task_id},
        "ask": {"kind": ask.kind, "upstream": ask.upstream, "tool": ask.tool, "step": ask.step,
                "request": ask.request},
        "context": {"now": iso(now), "now_ms": int(now * 1000), "environment": decider.environment,
                    "mode": decider.mode or "enforce"},
    }


async def decide_ask(decider: Decider, ask: AskRequest) -> Verdict:
    """Decide on one ask.  Never raises: every failure is a recorded deny (shadow mode does not apply)."""
    record = _record(decider, ask, None)
    if decider.over_limit(ask.agent):
        return await decider.record_failure(record, ReasonCode.RATE_LIMITED)

    async def prepare() -> dict[str, Any]:
        task = await decider.store.get_task(ask.task_id) if ask.task_id else None
        record.intent = task.intent if task is not None and task.agent == ask.agent.id else None
        return policy_input(decider, ask, record.intent, record.at)

    return await decide_by_policy(decider, record, prepare, "ask")


async def refuse_ask(decider: Decider, ask: AskRequest, code: ReasonCode, detail: str | None = None) -> Verdict:
    """Record an ask refused before the policy (no call to give it to, a client that cannot take it)."""
    return await decider.record_failure(_record(decider, ask, None), code, detail)


def _refusal(verdict: Verdict) -> types.ErrorData:
    return types.ErrorData(code=ASK_DENIED, message=f"refused by the gateway: {verdict.explanation}",
                           data={"decision_id": verdict.decision_id, "reasons": verdict.reasons})


def _capability(kind: AskKind) -> types.ClientCapabilities:
    if kind == "sampling":
        return types.ClientCapabilities(sampling=types.SamplingCapability())
    if kind == "roots":
        return types.ClientCapabilities(roots=types.RootsCapability())
    if kind == "elicitation_url":
        return types.ClientCapabilities(elicitation=types.ElicitationCapability(url=types.UrlElicitationCapability()))
    return types.ClientCapabilities(elicitation=types.ElicitationCapability())


class AskRelay:
    """The asks of one forwarded call: decided, recorded, and put to that call's agent only."""

    def __init__(self, decider: Decider, ctx: Any, agent: AgentIdentity, *, upstream: str, tool: str,
                 task_id: str | None, step: str | None,
                 elicited: Callable[[str, str], None] | None = None) -> None:
        self.decider = decider
        self.elicited = elicited  # told (upstream, elicitationId) of each URL-mode elicitation put to the agent
        self.ctx = ctx
        self.agent = agent
        self.upstream = upstream
        self.tool = tool
        self.task_id = task_id
        self.step = step
        self.refused: Verdict | None = None  # the last ask refused (on 2026-07-28 it ends the call)

    def capabilities(self) -> dict[str, Any]:
        """The asks this call's agent can take, as the client capabilities the upstream is told for
        this call (on 2026-07-28 they go with each request: see ``upstream_lean``): what the agent's
        client declared of sampling, elicitation and roots, and nothing when the gateway has no way
        to put an ask to it (a 2026-07-28 agent is asked in its call's result: see ``roundtrips``)."""
        session = self.ctx.session
        declared = getattr(session, "client_capabilities", None)
        if declared is None or not (session.can_send_request
                                    or getattr(self.ctx, "protocol_version", None) in MODERN_PROTOCOL_VERSIONS):
            return {}  # no way back to the agent (stateless HTTP on a 2025-era version)
        doc = declared.model_dump(by_alias=True, mode="json", exclude_none=True)
        caps = {k: doc[k] for k in ("sampling", "elicitation") if k in doc}
        if "roots" in doc:
            caps["roots"] = {}  # an agent's roots/list_changed is not passed on: the upstream asks each time
        return caps

    def request(self, action: AskAction, kind: AskKind, request: dict[str, Any]) -> AskRequest:
        return AskRequest(agent=self.agent, action=action, kind=kind, upstream=self.upstream, tool=self.tool,
                          task_id=self.task_id, step=self.step, request=request)

    def can_take(self, kind: AskKind) -> bool:
        """The agent's client declared what an ask of ``kind`` needs."""
        return bool(self.ctx.session.check_client_capability(_capability(kind)))

    def ask_for(self, send: types.ServerRequest) -> AskRequest:
        """What ``send`` (sampling, elicitation in form or URL mode, roots) asks, to be decided."""
        if isinstance(send, types.CreateMessageRequest):
            return self.request("sampling/createMessage", "sampling", _dump(send.params))
        if isinstance(send, types.ElicitRequest):
            url = isinstance(send.params, types.ElicitRequestURLParams)
            return self.request("elicitation/create", "elicitation_url" if url else "elicitation", _dump(send.params))
        return self.request("roots/list", "roots", {})

    async def decide(self, ask: AskRequest, *, reachable: bool = True) -> Verdict:
        """``ask`` decided and recorded: ``ask_unsupported`` when the agent cannot take it (or cannot
        be reached at all), else the Rego policy's; a refusal is kept as ``refused``."""
        if not reachable or not self.can_take(ask.kind):
            verdict = await refuse_ask(self.decider, ask, ReasonCode.ASK_UNSUPPORTED, ask.kind)
        else:
            verdict = await decide_ask(self.decider, ask)
        if verdict.outcome != "allow":
            self.refused = verdict
        return verdict

    async def _ask(self, send: types.ServerRequest, result_type: type[Any],
                   allowed: Callable[[], None] | None = None) -> Any:
        session = self.ctx.session
        verdict = await self.decide(self.ask_for(send), reachable=session.can_send_request)
        if verdict.outcome != "allow":
            return _refusal(verdict)
        if allowed is not None:
            allowed()
        try:
            return await session.send_request(
                send, result_type, metadata=ServerMessageMetadata(related_request_id=self.ctx.request_id))
        except Exception as exc:  # noqa: BLE001 - the agent's client refused or failed: tell the upstream, briefly
            error = getattr(exc, "error", None)
            if isinstance(error, types.ErrorData):
                return types.ErrorData(code=error.code, message=error.message[:500])
            log.info("ask %s: the agent's client failed: %s", verdict.decision_id, type(exc).__name__)
            return types.ErrorData(code=types.INTERNAL_ERROR, message="the agent's client did not answer")

    async def sampling(self, params: types.CreateMessageRequestParams) -> Any:
        result_type = types.CreateMessageResultWithTools if params.tools else types.CreateMessageResult
        return await self._ask(types.CreateMessageRequest(params=params), result_type)

    async def elicitation(self, params: types.ElicitRequestParams) -> Any:
        allowed = None
        if isinstance(params, types.ElicitRequestURLParams) and self.elicited is not None and params.elicitation_id:
            # remembered once allowed, before the agent sees it (its completion may come before the answer)
            allowed = functools.partial(self.elicited, self.upstream, params.elicitation_id)
        return await self._ask(types.ElicitRequest(params=params), types.ElicitResult, allowed)

    async def roots(self) -> Any:
        return await self._ask(types.ListRootsRequest(), types.ListRootsResult)


def _dump(params: Any) -> dict[str, Any]:
    doc = params.model_dump(mode="json", by_alias=True, exclude_none=True)
    doc.pop("_meta", None)
    return doc


async def refuse_unattributed(decider: Decider, upstream: str, action: AskAction, kind: AskKind,
                              calls_in_flight: int) -> types.ErrorData:
    """An ask no single call owns: recorded under the gateway's own name, refused."""
    ask = AskRequest(agent=AgentIdentity(id="-", issuer="-", claims={}), action=action, kind=kind,
                     upstream=upstream, tool="-")
    verdict = await refuse_ask(decider, ask, ReasonCode.ASK_UNATTRIBUTED, f"{calls_in_flight} calls in flight")
    return _refusal(verdict)

