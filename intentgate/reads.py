"""Reads: decisions on an upstream's resources (``resources/read``, ``resources/subscribe``) and
prompts (``prompts/get``), and on completing an argument of either (``completion/complete``).

Reads belong to no workflow: there is no task, step or action token.  Each read is judged by
the Rego policy alone (``opa/intentgate/reads.rego``: the agent must use the upstream, and the
URI or prompt name must be listed as readable) and recorded like any decision, before the
upstream is asked.  Any failure is a recorded deny, as for tool calls.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .canonical import arguments_sha256
from .clock import iso
from .decide import Decider, Verdict, explain, new_id
from .errors import GatewayError, ReasonCode, reason
from .identity import AgentIdentity
from .policy import PolicyResult
from .store import DecisionRecord

__all__ = ["ReadAction", "ReadRequest", "decide_by_policy", "decide_read", "keep_arguments", "read_verdict",
           "refuse_read"]

log = logging.getLogger("intentgate.reads")

ReadAction = Literal["resources/read", "resources/subscribe", "prompts/get", "completion/complete"]


class ReadRequest(BaseModel):
    """One read to decide on.  ``name`` is the upstream's own resource URI or prompt name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent: AgentIdentity
    action: ReadAction
    upstream: str
    name: str
    ref: Literal["prompt", "resource"] | None = None  # completion/complete: what is completed
    untrusted_arguments: dict[str, Any] = Field(default_factory=dict)


def _record(decider: Decider, read: ReadRequest) -> DecisionRecord:
    record = DecisionRecord(
        id=new_id("dec"), at=decider.clock.now(), kind=read.action, agent=read.agent.id,
        upstream=read.upstream[:64], tool=read.name[:256], outcome="deny", reasons=[],
        intents_revision=decider.intents.revision,
    )
    if read.untrusted_arguments:
        keep_arguments(decider, record, read.untrusted_arguments)
    return record


def keep_arguments(decider: Decider, record: DecisionRecord, arguments: dict[str, Any]) -> None:
    """Put ``arguments`` on a policy-only decision: their digest always, themselves when the
    gateway audits arguments; masked when they are not canonical JSON."""
    try:
        record.arguments_sha256 = arguments_sha256(arguments)
        record.arguments = arguments if decider.audit_arguments else None
    except Exception:  # noqa: BLE001 - not canonical JSON: keep it out of the log
        record.masked = ["/arguments"]


def read_verdict(result: PolicyResult) -> tuple[Literal["allow", "deny"], list[str]]:
    """A read is allowed or denied; there is no approval for reads, so ``hold`` is ignored."""
    if result.allow:
        return "allow", []
    return "deny", [reason(ReasonCode.POLICY_DENIED), *(reason(ReasonCode.POLICY, r) for r in result.reasons)]


def policy_input(decider: Decider, read: ReadRequest, now: float) -> dict[str, Any]:
    return {
        "action": read.action,
        "agent": {"id": read.agent.id, "claims": read.agent.claims},
        "read": {"upstream": read.upstream, "name": read.name, "ref": read.ref, "arguments": read.untrusted_arguments},
        "context": {"now": iso(now), "now_ms": int(now * 1000), "environment": decider.environment,
                    "mode": decider.mode or "enforce"},
    }


async def decide_read(decider: Decider, read: ReadRequest) -> Verdict:
    """Decide on one read.  Never raises: every failure is a recorded deny.

    Shadow mode does not apply to reads: a read the policy refuses is refused.
    """
    record = _record(decider, read)
    if decider.over_limit(read.agent):
        return await decider.record_failure(record, ReasonCode.RATE_LIMITED)

    async def prepare() -> dict[str, Any]:
        return policy_input(decider, read, record.at)

    return await decide_by_policy(decider, record, prepare, "read")


async def decide_by_policy(decider: Decider, record: DecisionRecord,
                           prepare: Callable[[], Awaitable[dict[str, Any]]], what: str) -> Verdict:
    """Judge ``record`` by the Rego policy alone (allow or deny, no hold) and commit it; the
    policy input comes from ``prepare``.  Never raises: every failure is a recorded deny."""
    try:
        pinput = await prepare()
        record.policy_input = pinput
        await decider.policy.reload_if_changed()
        record.policy_revision = decider.policy.revision
        result: PolicyResult = await decider.evaluate_policy(pinput, record.id)  # late answers deny too
        record.policy_revision = decider.policy.revision
        record.policy_result = result.model_dump()
        record.outcome, record.reasons = read_verdict(result)
        await decider.store.commit_decision(record)
    except Exception as exc:  # noqa: BLE001 - fail closed, whatever happened
        code = exc.code if isinstance(exc, GatewayError) else ReasonCode.INTERNAL_ERROR
        log.error("%s decision failed closed", what, extra={"decision_id": record.id, "code": code.value},
                  exc_info=not isinstance(exc, GatewayError))
        return await decider.record_failure(record, code)
    return Verdict(decision_id=record.id, outcome=record.outcome, reasons=record.reasons,
                   explanation=explain(record.reasons, []))


async def refuse_read(decider: Decider, read: ReadRequest, code: ReasonCode, detail: str | None = None) -> Verdict:
    """Record a read refused before the policy (unknown upstream, resource or prompt)."""
    record = _record(decider, read)
    return await decider.record_failure(record, code, detail)
