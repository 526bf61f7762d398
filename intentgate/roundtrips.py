"""Asks to 2026-07-28 agents: the multi-round-trip path (``InputRequiredResult``).

An agent connected on the 2026-07-28 protocol cannot be sent a request: the gateway answers
its call instead with an ``InputRequiredResult`` (the upstream's own input requests, each
decided and recorded by :func:`asks.decide_ask` first) and a ``request_state`` the gateway
seals; the agent calls again with its ``input_responses`` and that state.  The sealed state
(:class:`CallState`) carries what the continuation needs and may not change: the agent, the
task and step, the tool, the arguments' digest, the decision that allowed the call, the ask
decisions by key (with their kinds), and the upstream's own ``request_state``.  It is sealed
with the SDK's ``AESGCMRequestStateCodec`` (encrypted and authenticated: the agent can
neither read nor change it) under keys derived from the gateway's action-token signing keys
(the current one seals; the previous one still opens, so a rotation does not break a round in
flight), lives ``front.request_state_ttl_seconds``, and is single-use: its id is a row of
the tokens table, burnt by the continuation (ending the task revokes it like a token).

A continuation is not a new workflow step: it is recorded as a ``tools/call`` decision of its
own (``input_continuation:<decision id of the allowed call>``) that commits a fresh action
token, bound to the same tool, arguments, task and step, before anything is forwarded.
"""

from __future__ import annotations

import json
from typing import Any

import mcp_types as types
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from mcp.server.request_state import AESGCMRequestStateCodec, InvalidRequestState
from pydantic import BaseModel, ConfigDict, ValidationError

from .asks import AskKind, AskRelay
from .clock import Clock
from .decide import Decider, Verdict, explain, new_id
from .errors import ReasonCode, reason
from .identity import AgentIdentity
from .keys import KeySet
from .store import DecisionRecord, TokenRecord
from .verify import ConsumeOutcome

__all__ = ["CallState", "RequestStates", "StateRefused", "ask_input_requests", "continue_call"]

_KEY_INFO = b"intentgate/request-state/v1"
_VERSION = 1
_RESPONSE_TYPES: dict[str, tuple[type[Any], ...]] = {
    "sampling": (types.CreateMessageResult, types.CreateMessageResultWithTools),
    "elicitation": (types.ElicitResult,), "elicitation_url": (types.ElicitResult,),
    "roots": (types.ListRootsResult,),
}


class StateRefused(Exception):
    """A continuation refused before anything was forwarded: ``code`` and its detail."""

    def __init__(self, code: ReasonCode, detail: str | None = None) -> None:
        super().__init__(code.value)
        self.code, self.detail = code, detail


class CallState(BaseModel):
    """What a sealed ``request_state`` holds (never seen by the agent in the clear)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: int = _VERSION
    id: str  # single-use: a row of the tokens table
    iat: float
    exp: float
    agent: str
    task_id: str
    intent: str | None = None
    step: str
    upstream: str
    tool: str  # the upstream's own name
    arguments_sha256: str
    decision_id: str  # the decision that allowed the call
    asks: dict[str, tuple[str, AskKind]]  # input request key -> (ask decision id, kind)
    upstream_state: str | None = None
    round: int = 1


class RequestStates:
    """Seals and opens :class:`CallState` under keys derived from the action-token signing keys."""

    def __init__(self, keyset: KeySet, clock: Clock, ttl_seconds: float) -> None:
        self.keyset, self.clock, self.ttl = keyset, clock, ttl_seconds
        self._codec: tuple[tuple[str, ...], AESGCMRequestStateCodec] | None = None

    def codec(self) -> AESGCMRequestStateCodec:
        keys = list(reversed(self.keyset.published()))  # current first: it seals; every key opens
        kids = tuple(k.kid for k in keys)
        if self._codec is None or self._codec[0] != kids:
            secrets = [HKDF(algorithm=SHA256(), length=32, salt=None, info=_KEY_INFO).derive(
                k.private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                        serialization.NoEncryption())) for k in keys]
            self._codec = (kids, AESGCMRequestStateCodec(secrets))
        return self._codec[1]

    def seal(self, state: CallState) -> str:
        return self.codec().seal(state.model_dump_json().encode())

    def open(self, token: str) -> CallState:
        """The state sealed in ``token``, or ``StateRefused`` (forged, foreign, malformed, expired)."""
        try:
            state = CallState.model_validate(json.loads(self.codec().unseal(token)))
        except (InvalidRequestState, ValueError, ValidationError):
            raise StateRefused(ReasonCode.REQUEST_STATE_INVALID) from None
        if state.v != _VERSION:
            raise StateRefused(ReasonCode.REQUEST_STATE_INVALID, "version")
        if not self.clock.now() < state.exp:
            raise StateRefused(ReasonCode.REQUEST_STATE_EXPIRED)
        return state


async def ask_input_requests(relay: AskRelay, result: types.InputRequiredResult
                             ) -> tuple[dict[str, tuple[str, AskKind]], Verdict | None]:
    """Decide each of the upstream's input requests in turn (each recorded); the first refusal
    ends it (the rest are not decided).  Returns the allowed asks by key and the refusal."""
    allowed: dict[str, tuple[str, AskKind]] = {}
    for key, request in (result.input_requests or {}).items():
        ask = relay.ask_for(request)
        verdict = await relay.decide(ask)
        if verdict.outcome != "allow":
            return allowed, verdict
        allowed[key] = (verdict.decision_id, ask.kind)
    return allowed, None


async def issue_state(decider: Decider, states: RequestStates, state: CallState) -> str:
    """Record the state's id as an issued token row (so it is burnt once, revoked with its task), and seal it."""
    await decider.store.issue_token(TokenRecord(
        jti=state.id, decision_id=state.decision_id, task_id=state.task_id, agent=state.agent,
        audience=state.upstream, tool=f"{state.upstream}.{state.tool}", arguments_sha256=state.arguments_sha256,
        issued_at=state.iat, expires_at=state.exp))
    return states.seal(state)


def new_state(states: RequestStates, *, agent: str, task_id: str, step: str, upstream: str, tool: str,
              arguments_sha256: str, decision_id: str, asks: dict[str, tuple[str, AskKind]],
              upstream_state: str | None, intent: str | None, round_no: int) -> CallState:
    now = states.clock.now()
    return CallState(id=new_id("rst"), iat=now, exp=now + states.ttl, agent=agent, task_id=task_id, step=step,
                     upstream=upstream, tool=tool, arguments_sha256=arguments_sha256, decision_id=decision_id,
                     asks=asks, upstream_state=upstream_state, intent=intent, round=round_no)


async def continue_call(decider: Decider, states: RequestStates, *, identity: AgentIdentity, upstream: str, tool: str,
                        arguments_sha256: str | None, arguments: dict[str, Any], wire_state: str,
                        responses: dict[str, Any] | None) -> tuple[CallState | None, Verdict]:
    """Decide a continuation: the state opened and checked against the call, the responses
    against what was asked, the task still running, the state burnt, and a fresh action token
    committed with an allow.  Every refusal is recorded; nothing here advances the task."""
    agent = identity.id
    now = decider.clock.now()
    record = DecisionRecord(id=new_id("dec"), at=now, agent=agent, upstream=upstream[:64],
                            tool=f"{upstream}.{tool}"[:256], outcome="deny", reasons=[],
                            arguments_sha256=arguments_sha256, intents_revision=decider.intents.revision)
    if arguments_sha256 is None:  # not canonical JSON: kept out of the log
        record.masked = ["/arguments"]
    elif decider.audit_arguments:
        record.arguments = arguments
    state: CallState | None = None
    if decider.over_limit(identity):
        record.masked = ["/arguments"]
        return None, await decider.record_failure(record, ReasonCode.RATE_LIMITED)
    try:
        state = states.open(wire_state)
        record.task_id, record.step = state.task_id, state.step
        record.intent = state.intent
        if state.agent != agent:
            raise StateRefused(ReasonCode.REQUEST_STATE_MISMATCH, "agent")
        if (state.upstream, state.tool) != (upstream, tool):
            raise StateRefused(ReasonCode.REQUEST_STATE_MISMATCH, "tool")
        if state.arguments_sha256 != arguments_sha256:
            raise StateRefused(ReasonCode.REQUEST_STATE_MISMATCH, "arguments")
        for key, response in (responses or {}).items():
            asked = state.asks.get(key)
            if asked is None or not isinstance(response, _RESPONSE_TYPES[asked[1]]):
                raise StateRefused(ReasonCode.INPUT_RESPONSE_UNASKED, key[:64])
        task = await decider.store.get_task(state.task_id)
        if task is None or task.agent != agent:
            raise StateRefused(ReasonCode.REQUEST_STATE_MISMATCH, "task")
        record.intent, record.intent_version = task.intent, task.intent_version
        # a task this very call completed (a terminal step) is continued; one completed later by another
        # call, or ended, failed or expired, has revoked the state's row with its tokens (consume says so)
        if task.status not in ("active", "completed"):
            raise StateRefused(ReasonCode.TASK_ENDED, task.status)
        if task.is_expired(now):
            raise StateRefused(ReasonCode.TASK_EXPIRED)
        minted = decider.issuer.mint(
            agent=agent, task_id=task.id, intent=task.intent, step=state.step, upstream=upstream,
            tool=f"{upstream}.{tool}", arguments_sha256=state.arguments_sha256, task_expires_at=task.expires_at)
    except StateRefused as refused:
        return state, await decider.record_failure(record, refused.code, refused.detail)
    except Exception as exc:  # noqa: BLE001 - fail closed
        code = getattr(exc, "code", ReasonCode.INTERNAL_ERROR)
        return state, await decider.record_failure(record, code if isinstance(code, ReasonCode)
                                                   else ReasonCode.INTERNAL_ERROR)

    def refused(outcome: ConsumeOutcome) -> DecisionRecord:
        record.outcome = "deny"
        record.reasons = [reason(ReasonCode.REQUEST_STATE_REPLAYED) if outcome is ConsumeOutcome.REPLAYED
                          else reason(ReasonCode.TASK_ENDED, "revoked") if outcome is ConsumeOutcome.REVOKED
                          else reason(ReasonCode.REQUEST_STATE_INVALID, "unknown")]
        return record

    burnt = await decider.store.consume(state.id, expires_at=state.exp, now=now, on_refused=refused)
    if burnt is not ConsumeOutcome.CONSUMED:
        return state, Verdict(decision_id=record.id, outcome="deny", reasons=record.reasons,
                              explanation=explain(record.reasons, []))
    record.outcome = "allow"
    record.reasons = [reason(ReasonCode.INPUT_CONTINUATION, state.decision_id)]
    record.token_jti, record.token_expires_at = minted.jti, minted.expires_at
    token = TokenRecord(jti=minted.jti, decision_id=record.id, task_id=state.task_id, agent=agent,
                        audience=upstream, tool=f"{upstream}.{tool}", arguments_sha256=state.arguments_sha256,
                        issued_at=minted.issued_at, expires_at=minted.expires_at, status="consumed", consumed_at=now)
    try:
        await decider.store.commit_decision(record, token=token)
    except Exception:  # noqa: BLE001 - not recorded: not forwarded
        return state, Verdict(decision_id=record.id, outcome="deny", reasons=[ReasonCode.STORE_ERROR.value],
                              explanation=explain([ReasonCode.STORE_ERROR.value], []), recorded=False)
    intent = decider.intents.get(record.intent or "")
    return state, Verdict(decision_id=record.id, outcome="allow", reasons=record.reasons,
                          explanation=explain(record.reasons, []), token=minted,
                          keep=intent.kept_paths(state.step) if intent is not None else {})
