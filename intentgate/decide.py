"""The decision pipeline: task → workflow → policy → verdict → token → audit.

Each stage is a plain function of the previous one's output.  The decision is committed
to the store *before* a token leaves this module; any exception in any stage becomes a
recorded ``deny`` (``internal_error``, ``policy_error`` or ``store_error``): fail closed.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .bindings import POLICY_VALUES
from .canonical import arguments_sha256, canonical_json
from .clock import Clock, SystemClock, iso
from .errors import GatewayError, PolicyError, ReasonCode, TaskError, reason, reason_code_of
from .identity import AgentIdentity
from .intents import Intent, IntentRegistry
from .policy import PolicyEngine, PolicyResult
from .ratelimit import RateLimiter
from .store import ApprovalRecord, CommitResult, DecisionRecord, GrantUse, Outcome, Store, TaskAdvance, TokenRecord
from .store.budgets import BudgetSpend
from .tasks import TaskGrant, TaskIssuer
from .tokens import ActionTokenIssuer, MintedToken
from .tracing import OFF, Tracing, failed
from .usage import BudgetUse, begin_budget_uses, call_budget_uses, usage_document
from .workflow import HistoryEntry, Task, WorkflowResult, allowed_next, check_call

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

__all__ = ["CallRequest", "Decider", "TaskEnded", "TaskStarted", "Verdict", "new_id", "policy_input", "verdict_of"]

log = logging.getLogger("intentgate.decide")

# Failures about the task itself: never let through, not even in shadow mode.
_HARD = {
    ReasonCode.MISSING_TASK_CONTEXT,
    ReasonCode.UNKNOWN_TASK,
    ReasonCode.UNKNOWN_INTENT,
    ReasonCode.TASK_NOT_OWNED,
    ReasonCode.TASK_ENDED,
    ReasonCode.TASK_EXPIRED,
}


def new_id(prefix: str) -> str:
    """Opaque random identifier such as ``dec_3kTMd9…`` (96 bits)."""
    return f"{prefix}_{secrets.token_urlsafe(12)}"


class CallRequest(BaseModel):
    """One tool call to decide on.  Arguments stay untrusted until the workflow checked them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent: AgentIdentity
    task_id: str | None = None
    step: str | None = None
    upstream: str
    tool: str = Field(description="the upstream's own tool name")
    untrusted_arguments: dict[str, Any] = Field(default_factory=dict)
    burn_on_commit: bool = Field(
        default=False,
        description="the caller forwards the call itself (the MCP front): the token is recorded as "
        "consumed in the decision's own transaction instead of being burnt in a second one",
    )

    @property
    def qualified_tool(self) -> str:
        return f"{self.upstream}.{self.tool}"


class Verdict(BaseModel):
    """What the caller of ``decide`` gets.  ``token`` is secret: never log it."""

    model_config = ConfigDict(frozen=True)

    decision_id: str
    outcome: Outcome
    reasons: list[str]
    explanation: str
    allowed_next: list[str] = Field(default_factory=list)
    token: MintedToken | None = None
    approval_id: str | None = None
    task_completed: bool = False
    recorded: bool = True
    keep: dict[str, tuple[str, ...]] = Field(
        default_factory=dict, description="paths of this call's result that later bindings read: keep their values")

    @property
    def forward(self) -> bool:
        """True when the call may go to the upstream (allow, or shadow-mode would_deny)."""
        return self.outcome in ("allow", "would_deny") and self.token is not None


class TaskStarted(BaseModel):
    task_id: str
    intent: str
    intent_version: str
    expires_at: float
    start_steps: list[str]
    decision_id: str
    agent: str = ""
    issuer: str | None = None


class TaskEnded(BaseModel):
    task_id: str
    status: str
    revoked_tokens: int
    decision_id: str


def explain(reasons: list[str], allowed: list[str]) -> str:
    """One line a human or an agent can act on."""
    if not reasons:
        return "allowed"
    code = reason_code_of(reasons[0])
    detail = reasons[0].partition(":")[2]
    if code is ReasonCode.APPROVED:
        return f"allowed: approved by a reviewer ({detail})"
    if code is ReasonCode.INPUT_CONTINUATION:
        return f"allowed: the continuation of the call allowed by {detail}, with the answers to its asks"
    if code is ReasonCode.BREAK_GLASS:
        return f"allowed under break-glass grant {detail}; this call is flagged for review"
    nxt = f"; allowed next: {', '.join(allowed)}" if allowed else ""
    match code:
        case ReasonCode.STEP_OUT_OF_ORDER:
            return f"step {detail!r} is not allowed at this point of the workflow{nxt}"
        case ReasonCode.UNKNOWN_STEP:
            return f"the intent has no step {detail!r}{nxt}"
        case ReasonCode.TOOL_MISMATCH:
            return f"tool {detail!r} is not the tool of this step{nxt}"
        case ReasonCode.ARGUMENT_CONSTRAINT:
            return f"argument {detail!r} does not meet the step's constraints"
        case ReasonCode.ARGUMENT_MISSING:
            return f"argument {detail!r} is required by this step"
        case ReasonCode.ARGUMENT_NOT_ALLOWED:
            return f"argument {detail!r} is not declared for this step"
        case ReasonCode.BINDING_MISMATCH:
            return f"argument {detail!r} must equal the value the task is bound to"
        case ReasonCode.BINDING_UNRESOLVED:
            return f"argument {detail!r} is bound to a step the task has not taken"
        case ReasonCode.MAX_CALLS_EXCEEDED:
            return f"step {detail!r} has been called as often as the intent allows{nxt}"
        case ReasonCode.APPROVAL_REQUIRED | ReasonCode.POLICY_HOLD:
            return "held for a reviewer's approval; retry the same call once it is approved"
        case ReasonCode.POLICY_DENIED | ReasonCode.POLICY:
            return "denied by policy: " + ", ".join(r.partition(":")[2] for r in reasons if ":" in r)
        case ReasonCode.TASK_EXPIRED:
            return "the task has expired; begin a new task"
        case ReasonCode.TASK_ENDED:
            return f"the task is {detail or 'ended'}; begin a new task"
        case ReasonCode.MALFORMED_REQUEST:
            return "the arguments are not canonical JSON (e.g. NaN or an integer beyond 2**53)"
        case ReasonCode.UNKNOWN_TOOL:
            return f"no tool {detail!r} behind this gateway"
        case ReasonCode.RATE_LIMITED:
            return "too many requests from this agent; retry later"
        case ReasonCode.PAYLOAD_TOO_LARGE:
            return "the arguments are larger than this gateway accepts"
        case ReasonCode.MISSING_TASK_CONTEXT:
            return "every call must name its task and workflow step"
        case _:
            return code.value.replace("_", " ")


class _Clocked:
    """Per-stage timings in microseconds; given a tracer, each stage is a span too (a child of
    the current span, ``intentgate.decide.<stage>``, timed by the same laps)."""

    __slots__ = ("_epoch", "_last", "_tracer", "timings")

    def __init__(self, tracer: Tracer | None = None) -> None:
        self._last = time.perf_counter_ns()
        self._tracer = tracer
        self._epoch = time.time_ns() - self._last if tracer is not None else 0  # perf counter -> wall clock
        self.timings: dict[str, int] = {}

    def lap(self, stage: str, *, span: bool = True) -> None:
        now = time.perf_counter_ns()
        self.timings[stage] = (now - self._last) // 1000
        if span and self._tracer is not None:
            self._tracer.start_span(f"intentgate.decide.{stage}", start_time=self._epoch + self._last).end(
                end_time=self._epoch + now)
        self._last = now


class Decider:
    """Runs the pipeline against one set of intents, one policy engine and one store."""

    def __init__(
        self,
        *,
        intents: IntentRegistry,
        policy: PolicyEngine,
        store: Store,
        issuer: ActionTokenIssuer,
        clock: Clock | None = None,
        environment: str = "prod",
        mode: Literal["enforce", "shadow"] | None = None,
        policy_timeout: float = 2.0,
        approval_ttl: int = 3600,
        audit_arguments: bool = True,
        limiter: RateLimiter | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.intents = intents
        self.policy = policy
        self.store = store
        self.issuer = issuer
        self.clock = clock or SystemClock()
        self.environment = environment
        self.mode = mode
        self.policy_timeout = policy_timeout
        self.approval_ttl = approval_ttl
        self.audit_arguments = audit_arguments
        self.limiter = limiter
        self.tracing = tracing or OFF

    def over_limit(self, agent: AgentIdentity) -> bool:
        """True when the agent has used up its rate (the caller refuses with ``rate_limited``)."""
        return self.limiter is not None and not self.limiter.allow(agent.id)

    def set_intents(self, intents: IntentRegistry) -> None:
        self.intents = intents
        self.policy.set_intents(intents.data_document())

    # ----- tasks ---------------------------------------------------------------------
    async def begin_task(
        self, agent: AgentIdentity, intent_name: str, params: dict[str, Any], task_reason: str, *,
        issuer: TaskIssuer | None = None, ttl_seconds: int | None = None, grant: TaskGrant | None = None,
    ) -> TaskStarted:
        """Begin a task for ``agent``: by a task ``issuer``, or by the agent itself (``issuer``
        None), or from a verified task ``grant`` (whose issuer, intent and parameters apply).

        Checked in Python (intent, agent, who may begin it, parameters, TTL, rate), then by
        the Rego policy (``action: task/begin``), and recorded either way; raises ``TaskError``
        with the decision id when refused.
        """
        if grant is not None:
            issuer, intent_name, params, task_reason = grant.issuer, grant.intent, grant.params, grant.reason
            ttl_seconds = grant.ttl_seconds
        now = self.clock.now()
        decision_id = new_id("dec")
        intent = self.intents.get(intent_name) if isinstance(intent_name, str) else None
        problem = self._begin_problem(agent, intent_name, intent, params, task_reason, issuer, ttl_seconds)
        plain = not (problem and problem[0] is ReasonCode.MALFORMED_REQUEST)
        record = DecisionRecord(
            id=decision_id,
            at=now,
            kind="task/begin",
            agent=agent.id,
            intent=str(intent_name)[:64],
            intent_version=intent.version if intent else None,
            outcome="deny" if problem else "allow",
            reasons=[reason(problem[0], problem[2])] if problem else [],
            masked=[] if plain else ["/policy_input"],
            intents_revision=self.intents.revision,
        )
        if not plain:
            record.policy_input = None
        elif problem or intent is None:
            record.policy_input = self._begin_input(agent, intent_name, intent, params, task_reason, issuer,
                                                    ttl_seconds, now, None) if self.audit_arguments else None
        if problem or intent is None:
            code, message, _ = problem or (ReasonCode.UNKNOWN_INTENT, "unknown intent", None)
            await self._commit(record)
            raise TaskError(message, code=code, decision_id=decision_id)

        ttl = min(ttl_seconds or intent.ttl_seconds, intent.ttl_seconds)
        uses = begin_budget_uses(intent, agent=agent.id, params=params)
        try:
            used = await self.store.budget_usage(
                [(u.name, u.scope, u.budget.window_seconds) for u in uses], now)
            open_tasks = {intent.name: await self.store.open_tasks(agent.id, intent.name, now)}
            usage = usage_document([u.with_used(x) for u, x in zip(uses, used, strict=True)], open_tasks)
            pinput = self._begin_input(agent, intent_name, intent, params, task_reason, issuer, ttl, now, usage)
            record.policy_input = pinput if self.audit_arguments else {**pinput, "params": "<redacted>"}
            await self.policy.reload_if_changed()
            result = await self.evaluate_policy(pinput, decision_id)
            record.policy_revision = self.policy.revision
            record.policy_result = result.model_dump()
        except Exception as exc:  # noqa: BLE001 - fail closed: the policy or the store failed
            code = exc.code if isinstance(exc, GatewayError) else ReasonCode.INTERNAL_ERROR
            if not isinstance(exc, GatewayError):
                log.error("task begin failed closed", extra={"decision_id": decision_id}, exc_info=True)
            await self.record_failure(record, code)
            raise TaskError("the task could not be begun", code=code, decision_id=decision_id) from exc
        if not result.allow or result.hold:
            # a task begin is allowed or not: a policy that asks to hold it refuses it
            record.outcome = "deny"
            record.reasons = ([reason(ReasonCode.POLICY_DENIED)] if not result.allow
                              else [reason(ReasonCode.POLICY_HOLD)]) + [reason(ReasonCode.POLICY, r)
                                                                         for r in result.reasons]
            await self._commit(record)
            raise TaskError(explain(record.reasons, []), code=reason_code_of(record.reasons[0]),
                            decision_id=decision_id)
        task = Task(
            id=new_id("tsk"),
            intent=intent.name,
            intent_version=intent.version,
            agent=agent.id,
            params=params,
            reason=task_reason,
            created_at=now,
            expires_at=now + ttl,
            issuer=issuer.label if issuer is not None else None,
        )
        record.task_id = task.id
        use = (GrantUse(grant.jti, issuer=grant.issuer.label, agent=agent.id, expires_at=grant.expires_at)
               if grant is not None else None)
        committed = await self.store.begin_task(task, record, grant=use)
        if not committed.committed:  # the grant began a task already (here or on another replica)
            record.id, record.task_id = new_id("dec"), None
            record.outcome, record.reasons = "deny", [reason(ReasonCode.TASK_GRANT_REPLAYED)]
            await self._commit(record)
            raise TaskError("this task grant was already used", code=ReasonCode.TASK_GRANT_REPLAYED,
                            decision_id=record.id)
        return TaskStarted(
            task_id=task.id,
            intent=intent.name,
            intent_version=intent.version,
            expires_at=task.expires_at,
            start_steps=list(intent.start),
            decision_id=decision_id,
            agent=agent.id,
            issuer=task.issuer,
        )

    async def refuse_begin(self, agent: AgentIdentity, code: ReasonCode, message: str,
                           detail: str | None = None, *, intent: str | None = None) -> TaskError:
        """Record a task begin refused before it could be checked (a task grant that did not
        verify, a REST caller that is no task issuer); the error to raise."""
        record = DecisionRecord(
            id=new_id("dec"), at=self.clock.now(), kind="task/begin", agent=agent.id[:512],
            intent=(intent or None) and intent[:64], outcome="deny", reasons=[],
            intents_revision=self.intents.revision,
        )
        verdict = await self.record_failure(record, code, detail)
        return TaskError(message, code=code, decision_id=verdict.decision_id)

    def _begin_problem(
        self, agent: AgentIdentity, intent_name: Any, intent: Intent | None, params: Any, task_reason: Any,
        issuer: TaskIssuer | None, ttl_seconds: int | None,
    ) -> tuple[ReasonCode, str, str | None] | None:
        """The first reason the gateway itself refuses this task begin, or None."""
        try:  # what cannot be canonical JSON cannot enter the audit log either
            canonical_json({"params": params, "reason": task_reason})
        except Exception:  # noqa: BLE001 - NaN, Infinity, integers beyond 2^53, non-JSON types
            return ReasonCode.MALFORMED_REQUEST, "task parameters and reason must be plain JSON", "arguments"
        if not isinstance(params, dict):
            return ReasonCode.INVALID_PARAMS, "params must be an object", None
        if intent is None:
            return ReasonCode.UNKNOWN_INTENT, f"no intent named {str(intent_name)[:64]!r}", None
        if not intent.permits_agent(agent.id):
            return ReasonCode.AGENT_NOT_PERMITTED, f"agent may not declare intent {intent.name!r}", None
        modes = self.intents.begin_modes(intent)
        if issuer is None and "agent" not in modes:
            return (ReasonCode.TASK_ISSUER_REQUIRED,
                    f"intent {intent.name!r} is begun by a task issuer, not by the agent", None)
        if issuer is not None and ("issuer" not in modes or not issuer.may_begin(intent.name, agent.id)):
            return ReasonCode.ISSUER_NOT_PERMITTED, f"task issuer {issuer.name!r} may not begin {intent.name!r} " \
                f"for this agent", issuer.name
        if errors := intent.param_errors(params):
            return ReasonCode.INVALID_PARAMS, "; ".join(errors), None
        limit = min(intent.ttl_seconds, issuer.max_ttl_seconds or intent.ttl_seconds) if issuer else intent.ttl_seconds
        if ttl_seconds is not None and (isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int)
                                        or not 1 <= ttl_seconds <= limit):
            return ReasonCode.INVALID_PARAMS, f"ttl_seconds must be 1..{limit} for this intent", None
        rated = f"issuer:{issuer.name}" if issuer is not None else agent.id  # who asked is who is counted
        if self.limiter is not None and not self.limiter.allow(rated):
            return ReasonCode.RATE_LIMITED, "too many task begins; slow down", None
        if not isinstance(task_reason, str) or not task_reason.strip() or len(task_reason) > 2000:
            return ReasonCode.INVALID_PARAMS, "reason must be a non-empty text of at most 2000 characters", None
        return None

    def _begin_input(
        self, agent: AgentIdentity, intent_name: Any, intent: Intent | None, params: Any, task_reason: Any,
        issuer: TaskIssuer | None, ttl_seconds: int | None, now: float, usage: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """The policy's ``input`` for a task begin (``action: task/begin``)."""
        return {
            "action": "task/begin",
            "agent": {"id": agent.id, "claims": agent.claims},
            "issuer": issuer.document() if issuer is not None else None,
            "intent": {"name": intent.name if intent else str(intent_name)[:64],
                       "version": intent.version if intent else None},
            "params": params,
            "reason": task_reason,
            "task": {"ttl_seconds": ttl_seconds},
            "context": {"now": iso(now), "now_ms": int(now * 1000), "environment": self.environment,
                        "mode": self.mode or (intent.mode if intent else "enforce")},
            "usage": usage or {"budgets": {}, "open_tasks": {}},
        }

    async def end_task(self, agent: AgentIdentity, task_id: str, *, issuer: TaskIssuer | None = None) -> TaskEnded:
        """End a task and revoke every unconsumed token it was issued: the agent's own task, or
        (``issuer``) a task that issuer began."""
        now = self.clock.now()
        task = await self.store.get_task(task_id)
        if task is None or (task.agent != agent.id if issuer is None else task.issuer != issuer.label):
            code = ReasonCode.UNKNOWN_TASK if task is None else ReasonCode.TASK_NOT_OWNED
            record_id = new_id("dec")
            await self._commit(
                DecisionRecord(
                    id=record_id, at=now, kind="task/end", agent=agent.id, task_id=task_id[:64],
                    outcome="deny", reasons=[reason(code)],
                )
            )
            raise TaskError(f"cannot end task {task_id[:64]!r}", code=code, decision_id=record_id)
        record = DecisionRecord(
            id=new_id("dec"), at=now, kind="task/end", agent=agent.id, intent=task.intent,
            intent_version=task.intent_version, task_id=task.id, outcome="allow", reasons=[],
            policy_input={"ended_by": issuer.document() if issuer is not None else "agent"},
        )
        result = await self.store.end_task(task.id, "ended", now, record)
        if not result.committed:
            raise TaskError(f"task {task_id!r} is already {task.status}", code=ReasonCode.TASK_ENDED)
        return TaskEnded(task_id=task.id, status="ended", revoked_tokens=result.revoked, decision_id=record.id)

    async def expire_tasks(self) -> int:
        """Expire overdue tasks and revoke their tokens (run periodically by the server)."""
        now = self.clock.now()

        def record(task: Task) -> DecisionRecord:
            return DecisionRecord(
                id=new_id("dec"), at=now, kind="task/expire", agent=task.agent, intent=task.intent,
                intent_version=task.intent_version, task_id=task.id, outcome="allow", reasons=[],
            )

        return await self.store.expire_tasks(now, record)

    # ----- calls ---------------------------------------------------------------------
    def policy_input(
        self, call: CallRequest, intent: Intent, task: Task, wf: WorkflowResult, now: float, mode: str
    ) -> dict[str, Any]:
        return policy_input(call, intent, task, wf, now, mode, self.environment)

    def _call_record(self, call: CallRequest) -> DecisionRecord:
        """A fresh decision record for a tool call, outcome ``deny`` until decided otherwise."""
        return DecisionRecord(
            id=new_id("dec"),
            at=self.clock.now(),
            agent=call.agent.id,
            task_id=(call.task_id or None) and call.task_id[:64],
            step=(call.step or None) and call.step[:64],
            upstream=call.upstream,
            tool=call.qualified_tool[:256],
            outcome="deny",
            reasons=[],
            intents_revision=self.intents.revision,
        )

    async def decide(self, call: CallRequest) -> Verdict:
        """Decide on one call.  Never raises: every failure is a recorded deny."""
        tracer = self.tracing.tracer
        if tracer is None:
            return await self._decide_call(call, self._call_record(call), _Clocked())
        record = self._call_record(call)
        with self.tracing.span("intentgate.decide") as span:
            verdict = await self._decide_call(call, record, _Clocked(tracer))
            if span.is_recording():
                span.set_attributes(_span_attributes(call, record.intent, verdict))
            return verdict

    async def _decide_call(self, call: CallRequest, record: DecisionRecord, clocked: _Clocked) -> Verdict:
        digest: str | None = None
        decision_id = record.id
        if self.over_limit(call.agent):
            record.masked = ["/arguments"]  # a flood is not worth storing
            return await self.record_failure(record, ReasonCode.RATE_LIMITED)
        try:
            try:
                digest = arguments_sha256(call.untrusted_arguments)
            except Exception:  # noqa: BLE001 - NaN, integers beyond 2**53, ...: not JSON we can sign
                record.masked = ["/arguments"]
                return await self._deny_early(record, ReasonCode.MALFORMED_REQUEST, "arguments")
            record.arguments_sha256 = digest
            if self.audit_arguments:
                record.arguments = call.untrusted_arguments
            return await self._decide(call, record, clocked, digest)
        except Exception as exc:  # noqa: BLE001 - fail closed, whatever happened
            code = exc.code if isinstance(exc, GatewayError) else ReasonCode.INTERNAL_ERROR
            log.error(
                "decision failed closed",
                extra={"decision_id": decision_id, "code": code.value, "error": type(exc).__name__},
                exc_info=not isinstance(exc, GatewayError),
            )
            return await self.record_failure(record, code)

    async def refuse(
        self, call: CallRequest, code: ReasonCode, detail: str | None = None, *, keep_arguments: bool = True
    ) -> Verdict:
        """Record and return a deny decided before the pipeline (unknown tool, oversized call)."""
        record = self._call_record(call)
        if keep_arguments and self.audit_arguments:
            try:
                record.arguments_sha256 = arguments_sha256(call.untrusted_arguments)
                record.arguments = call.untrusted_arguments
            except Exception:  # noqa: BLE001 - not canonical JSON: keep it out of the log
                record.masked = ["/arguments"]
        else:
            record.masked = ["/arguments"]
        return await self.record_failure(record, code, detail)

    async def record_failure(self, record: DecisionRecord, code: ReasonCode, detail: str | None = None) -> Verdict:
        """Record ``record`` as a deny for ``code``; still deny (unrecorded) when the store is down."""
        record.outcome, record.reasons = "deny", [reason(code, detail)]
        record.token_jti = record.token_expires_at = None
        recorded = True
        try:
            await self._commit(record)
        except Exception:  # noqa: BLE001 - the store itself is down: still deny
            log.error("could not record a failed decision", extra={"decision_id": record.id}, exc_info=True)
            recorded = False
        return Verdict(
            decision_id=record.id, outcome="deny", reasons=record.reasons,
            explanation=explain(record.reasons, []), recorded=recorded,
        )

    async def _deny_early(self, record: DecisionRecord, code: ReasonCode, detail: str | None = None) -> Verdict:
        record.outcome, record.reasons = "deny", [reason(code, detail)]
        await self._commit(record)
        return Verdict(
            decision_id=record.id, outcome="deny", reasons=record.reasons, explanation=explain(record.reasons, [])
        )

    async def _commit(self, record: DecisionRecord, **effects: Any) -> CommitResult:
        """``store.commit_decision``, in a span of its own (``intentgate.store.commit``) when tracing."""
        if self.tracing.tracer is None:
            return await self.store.commit_decision(record, **effects)
        with self.tracing.span("intentgate.store.commit") as span:
            try:
                committed = await self.store.commit_decision(record, **effects)
            except GatewayError as exc:
                failed(span, exc.code.value)
                raise
            if span.is_recording():
                span.set_attributes({"db.system.name": self.store.db.dialect, "intentgate.decision_id": record.id,
                                     "intentgate.outcome": record.outcome, "intentgate.committed": committed.committed})
            return committed

    async def evaluate_policy(self, pinput: dict[str, Any], decision_id: str | None = None) -> PolicyResult:
        """The policy's answer within ``policy_timeout``, else ``PolicyError`` (the call is denied).

        An engine that evaluates on the event loop (the embedded one) cannot be interrupted,
        so an answer that arrives after the deadline is refused as well: a policy that has
        become slow denies, whatever it would have answered.
        """
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.policy_timeout):  # no extra task, unlike wait_for
                result = await self.policy.evaluate(pinput, decision_id=decision_id)
        except TimeoutError as exc:
            raise PolicyError(f"policy evaluation did not finish within {self.policy_timeout}s") from exc
        elapsed = time.perf_counter() - started
        if elapsed > self.policy_timeout:
            raise PolicyError(f"policy evaluation took {elapsed:.3f}s, beyond its {self.policy_timeout}s timeout")
        return result

    async def _decide(self, call: CallRequest, record: DecisionRecord, clocked: _Clocked, digest: str) -> Verdict:
        now = record.at
        # --- task
        if not call.task_id or not call.step:
            return await self._deny_early(record, ReasonCode.MISSING_TASK_CONTEXT)
        uses: list[BudgetUse] = []

        def budgets_of(task: Task) -> list[tuple[str, str, int]]:
            """The budgets this call would spend (read in the same transaction as the task)."""
            intent = self.intents.get(task.intent)
            if intent is None or not grant_may_cover(intent, call.step, call.qualified_tool):
                return []
            uses[:] = call_budget_uses(intent, call.step or "", agent=call.agent.id, params=task.params,
                                       arguments=call.untrusted_arguments)
            return [(u.name, u.scope, u.budget.window_seconds) for u in uses]

        def reads_results(task: Task) -> bool:
            intent = self.intents.get(task.intent)
            return intent is not None and intent.reads_results

        task, used = await self.store.get_task_and_usage(call.task_id, budgets_of, now, with_results=reads_results)
        uses = [u.with_used(x) for u, x in zip(uses, used, strict=True)]  # what is left, before the policy sees it
        clocked.lap("task")
        if task is None:
            return await self._deny_early(record, ReasonCode.UNKNOWN_TASK)
        intent = self.intents.get(task.intent)
        record.intent, record.intent_version = task.intent, task.intent_version
        if intent is None:
            return await self._deny_early(record, ReasonCode.UNKNOWN_INTENT, task.intent)

        # --- workflow
        wf = check_call(
            intent, task, agent_id=call.agent.id, step=call.step, tool=call.qualified_tool,
            arguments=call.untrusted_arguments, now=now,
        )
        clocked.lap("workflow")

        # --- policy
        mode = self.mode or intent.mode
        pinput = self.policy_input(call, intent, task, wf, now, mode)
        if uses:
            pinput["usage"] = usage_document(uses)
        record.policy_input = pinput if self.audit_arguments else _without_arguments(pinput)
        await self.policy.reload_if_changed()
        record.policy_revision = self.policy.revision
        result: PolicyResult = await self.evaluate_policy(pinput, record.id)
        record.policy_revision = self.policy.revision  # an OPA on bundles says which answered
        record.policy_result = result.model_dump()
        clocked.lap("policy")

        # --- verdict
        step = intent.steps.get(call.step)
        outcome, reasons = verdict_of(wf, result, step.approval if step else "never")
        outcome, reasons = budget_verdict(outcome, reasons, [u for u in uses if u.exceeded])
        use_approval = None
        if outcome == "hold":  # a reviewer may have approved exactly this call already
            approved = await self.store.find_approved(
                agent=call.agent.id, task_id=task.id, step=call.step, tool=call.qualified_tool,
                arguments_sha256=digest, policy_revision=self.policy.revision, now=now,
            )
            clocked.lap("approval")
            if approved is not None:
                use_approval = approved.id
                outcome, reasons = "allow", [reason(ReasonCode.APPROVED, approved.id)]
        hard = any(reason_code_of(r) in _HARD for r in reasons)
        use_grant = None
        if (outcome in ("deny", "hold") and not hard and grant_may_cover(intent, call.step, call.qualified_tool)
                and await self.store.grants.may_have_grant(call.agent.id, now)):
            grant = await self.store.grants.find_active(  # a reviewer's break-glass exception
                agent=call.agent.id, tool=call.qualified_tool, intent=intent.name, now=now
            )
            clocked.lap("grant")
            if grant is not None and (step is None or step.approval != "required" or grant.overrides_approval):
                use_grant = grant.id
                outcome, reasons = "allow", [reason(ReasonCode.BREAK_GLASS, grant.id), *reasons]
        if mode == "shadow" and outcome != "allow" and not hard:
            outcome = "would_deny"
        record.outcome, record.reasons = outcome, reasons
        nexts = wf.allowed_next

        if outcome in ("deny", "hold"):
            return await self._commit_refusal(call, record, task, digest, nexts, clocked)

        # --- token (allow / would_deny): minted now, released only after the commit
        assert step is not None or outcome == "would_deny" or use_grant is not None
        minted = self.issuer.mint(
            agent=call.agent.id, task_id=task.id, intent=intent.name, step=call.step,
            upstream=call.upstream, tool=call.qualified_tool, arguments_sha256=digest,
            task_expires_at=task.expires_at, ttl_seconds=result.ttl_seconds,
        )
        clocked.lap("token")
        record.token_jti, record.token_expires_at = minted.jti, minted.expires_at
        entry = HistoryEntry(
            step=call.step, tool=call.qualified_tool, decision=outcome, decision_id=record.id, at=now,
            arguments=call.untrusted_arguments,
        )
        complete = bool(step and intent.is_terminal(call.step) and outcome == "allow")
        advance = TaskAdvance(task, entry, complete=complete)
        token_row = TokenRecord(
            jti=minted.jti, decision_id=record.id, task_id=task.id, agent=call.agent.id,
            audience=call.upstream, tool=call.qualified_tool, arguments_sha256=digest,
            issued_at=minted.issued_at, expires_at=minted.expires_at,
            **({"status": "consumed", "consumed_at": now} if call.burn_on_commit else {}),
        )
        # a call a reviewer let through is counted against its budgets, never refused by them
        reviewed = use_approval is not None or use_grant is not None or outcome == "would_deny"
        spends = [BudgetSpend(u.name, u.scope, u.spend, u.budget.limit, u.budget.window_seconds,
                              enforce=not reviewed) for u in uses]
        record.timings_us = dict(clocked.timings)
        committed = await self._commit(record, advance=advance, token=token_row, use_approval=use_approval,
                                       use_grant_id=use_grant, spends=spends)
        clocked.lap("store", span=False)  # the commit is a span of its own
        if not committed.committed:
            # another call moved the task on, used the approval, or spent the budget first:
            # this one loses, and says so
            record.id = new_id("dec")
            record.token_jti = record.token_expires_at = None
            if committed.conflict and committed.conflict.startswith("budget:"):
                name = committed.conflict.partition(":")[2]
                lost = next(u for u in uses if u.name == name)
                record.outcome, record.reasons = budget_verdict("allow", [], [lost])
                return await self._commit_refusal(call, record, task, digest, nexts, clocked)
            return await self._deny_early(record, ReasonCode.CONCURRENT_STEP)
        after = task.model_copy(update={"state": advance.state})
        return Verdict(
            decision_id=record.id, outcome=outcome, reasons=reasons,
            explanation=explain(reasons, nexts), allowed_next=[] if complete else allowed_next(intent, after),
            token=minted, task_completed=complete, keep=intent.kept_paths(call.step),
        )

    async def _commit_refusal(self, call: CallRequest, record: DecisionRecord, task: Task, digest: str,
                              nexts: list[str], clocked: _Clocked) -> Verdict:
        """Record a deny or hold (with its pending approval) and answer it."""
        approval = None
        if record.outcome == "hold":
            approval = ApprovalRecord(
                id=new_id("apr"), decision_id=record.id, agent=call.agent.id, task_id=task.id,
                step=call.step or "", tool=call.qualified_tool, arguments_sha256=digest,
                policy_revision=self.policy.revision, reasons=record.reasons, created_at=record.at,
                expires_at=min(record.at + self.approval_ttl, task.expires_at),
            )
        record.timings_us = dict(clocked.timings)
        await self._commit(record, approval=approval)
        clocked.lap("store", span=False)
        return Verdict(
            decision_id=record.id, outcome=record.outcome, reasons=record.reasons,
            explanation=explain(record.reasons, nexts), allowed_next=nexts,
            approval_id=approval.id if approval else None,
        )


def grant_may_cover(intent: Intent, step: str | None, tool: str) -> bool:
    """A break-glass grant covers only a call to a real step of the task's intent, with that
    step's own tool: it never turns ``unknown_step`` or ``tool_mismatch`` into an allow."""
    spec = intent.steps.get(step or "")
    return spec is not None and spec.tool == tool


def budget_verdict(outcome: Outcome, reasons: list[str], exceeded: list[BudgetUse]) -> tuple[Outcome, list[str]]:
    """A call the workflow and the policy allowed (or held) that would overspend a budget is
    denied (a budget with ``on_exceed: deny``) or held for a reviewer (``hold``)."""
    if not exceeded or outcome not in ("allow", "hold"):
        return outcome, reasons
    over = [reason(ReasonCode.BUDGET_EXCEEDED, u.name) for u in exceeded]
    if any(u.budget.on_exceed == "deny" for u in exceeded):
        return "deny", over + (reasons if outcome == "hold" else [])
    return "hold", over + reasons


def policy_input(
    call: CallRequest, intent: Intent, task: Task, wf: WorkflowResult, now: float, mode: str, environment: str
) -> dict[str, Any]:
    """The policy's ``input`` for one tool call (the contract in DESIGN.md)."""
    return {
        "action": "tools/call",
        "agent": {"id": call.agent.id, "claims": call.agent.claims},
        "intent": {"name": intent.name, "version": intent.version, "params": task.params},
        "task": {
            "id": task.id,
            "started_at": iso(task.created_at),
            "expires_at": iso(task.expires_at),
            "issuer": task.issuer,
            "results": {step: {path: found[:POLICY_VALUES] for path, found in paths.items()}
                        for step, paths in task.results.items()},
            # a bounded summary, never the whole history (its size must not grow with the task)
            "last_step": task.state.last_step,
            "steps_taken": task.state.calls,
            "counts": task.state.counts,
            "history": [r.model_dump() for r in task.state.recent],
        },
        "call": {
            "upstream": call.upstream,
            "tool": call.tool,
            "step": call.step,
            "arguments": call.untrusted_arguments,
        },
        "workflow": {"ok": wf.ok, "violations": wf.violations},
        "context": {
            "now": iso(now),
            "now_ms": int(now * 1000),
            "environment": environment,
            "mode": mode,
        },
    }


def verdict_of(wf: WorkflowResult, result: PolicyResult, approval: str) -> tuple[Outcome, list[str]]:
    """Workflow result + policy answer + the step's approval setting → (outcome, reasons)."""
    policy_reasons = [reason(ReasonCode.POLICY, r) for r in result.reasons]
    if not wf.ok:
        return "deny", list(wf.violations)
    if not result.allow:
        return "deny", [reason(ReasonCode.POLICY_DENIED), *policy_reasons]
    if approval == "required":
        return "hold", [reason(ReasonCode.APPROVAL_REQUIRED), *policy_reasons]
    if result.hold:
        return "hold", [reason(ReasonCode.POLICY_HOLD), *policy_reasons]
    return "allow", []


def _span_attributes(call: CallRequest, intent: str | None, verdict: Verdict) -> dict[str, Any]:
    """What the decision's span says of it: ids, names, the outcome and its reasons."""
    attributes = {
        "intentgate.decision_id": verdict.decision_id, "intentgate.agent": call.agent.id,
        "intentgate.upstream": call.upstream, "intentgate.tool": call.qualified_tool, "intentgate.task": call.task_id,
        "intentgate.step": call.step, "intentgate.intent": intent, "intentgate.outcome": verdict.outcome,
        "intentgate.reasons": verdict.reasons,
    }
    return {k: v for k, v in attributes.items() if v is not None}


def _without_arguments(pinput: dict[str, Any]) -> dict[str, Any]:
    call = dict(pinput["call"])
    call["arguments"] = {k: "<redacted>" for k in call["arguments"]}
    return {**pinput, "call": call}
