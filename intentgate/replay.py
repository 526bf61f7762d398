"""What-if replay: recorded decisions re-evaluated against a candidate policy and intents.

For each recorded decision that the policy took part in, replay rebuilds the call as it was
(agent, task parameters and the history the task had then, step, tool, recorded arguments,
time of the call), runs the workflow check against the candidate intents and the candidate
Rego policy, and compares the verdict with the verdict recorded then (from the recorded
workflow result and policy answer).  Approvals and break-glass grants are exceptions granted
by people, not verdicts: both sides are compared without them.  Nothing is written.

Task begins are replayed from the input recorded with them: who may begin the intent, for
which agents, with which parameters (the candidate intents), then the candidate policy.  A
call's budgets are judged by the candidate intents' limits on what was used when it was
decided (the ``usage`` recorded in its input).

Decisions taken before the policy (unknown task, missing context, oversized or malformed
calls, task ends) are counted as skipped, as are calls whose arguments were kept out of the
audit log (``audit.arguments: false``): without them the workflow cannot be re-run.
Reviewer and operator actions (approvals, grants, ...) are records of the log but not
decisions: they are passed over, not counted.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field, computed_field

from .decide import CallRequest, budget_verdict, policy_input, verdict_of
from .errors import ReasonCode, reason
from .identity import AgentIdentity
from .intents import IntentRegistry
from .policy import PolicyEngine, PolicyResult
from .reads import read_verdict
from .store import DecisionRecord, Store
from .store.ledger import REVIEW_KINDS
from .usage import BudgetUse, call_budget_uses, usage_document
from .workflow import Task, check_call

__all__ = ["ReplayChange", "ReplayReport", "Replayer"]

_READS = {"resources/read", "prompts/get"}
_EXCEPTIONS = ("approved:", "break_glass:")
_HOLD_CODES = ("approval_required", "policy_hold")


class ReplayChange(BaseModel):
    """One decision whose verdict would change."""

    decision_id: str
    seq: int
    at: float
    kind: str
    agent: str
    intent: str | None = None
    step: str | None = None
    tool: str | None = None
    before: str
    after: str
    before_reasons: list[str]
    after_reasons: list[str]


class ReplayReport(BaseModel):
    """What a candidate policy and intents would have decided differently."""

    checked: int = 0
    unchanged: int = 0
    transitions: dict[str, int] = Field(default_factory=dict, description='e.g. {"allow->deny": 3}')
    changes: list[ReplayChange] = Field(default_factory=list)
    skipped: dict[str, int] = Field(default_factory=dict, description="decisions not replayable, by why")
    policy_revision: str = ""
    intents_revision: str = ""
    seconds: float = 0.0
    decisions_per_second: float = 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def allow_to_deny(self) -> int:
        """Decisions that were allowed and would no longer be."""
        return sum(n for t, n in self.transitions.items() if t.startswith("allow->"))

    @computed_field  # type: ignore[prop-decorator]
    @property
    def deny_to_allow(self) -> int:
        """Decisions that were denied or held and would now be allowed."""
        return sum(n for t, n in self.transitions.items() if t.endswith("->allow"))


def _recorded_uses(intent: Any, task: Task, call: CallRequest, pinput: dict[str, Any]) -> list[BudgetUse]:
    """The candidate intent's budgets for this call, with what was used of each when it was
    decided (from the recorded ``usage``; a budget new in the candidate counts from zero)."""
    recorded = ((pinput.get("usage") or {}).get("budgets") or {})
    uses = call_budget_uses(intent, call.step or "", agent=call.agent.id, params=task.params,
                            arguments=call.untrusted_arguments)
    out = []
    for u in uses:
        then = recorded.get(u.name)
        used = then.get("used") if isinstance(then, dict) and then.get("scope") == u.scope else 0.0
        out.append(u.with_used(float(used) if isinstance(used, int | float) and not isinstance(used, bool) else 0.0))
    return out


def _replayable_begin(record: DecisionRecord) -> bool:
    """A task begin recorded with its full input (older ones kept only params and reason)."""
    return record.kind == "task/begin" and (record.policy_input or {}).get("action") == "task/begin"


def _held_or_denied(reasons: list[str]) -> str:
    return "hold" if reasons and reasons[0].split(":")[0] in _HOLD_CODES else "deny"


def _recorded_verdict(record: DecisionRecord) -> tuple[str, list[str]] | None:
    """The verdict the workflow and policy gave then, before any approval or grant."""
    if _replayable_begin(record):
        return record.outcome, list(record.reasons)
    if record.policy_input is None or record.policy_result is None:
        return None
    reasons = [r for r in record.reasons if not r.startswith(_EXCEPTIONS)]
    if any(r.startswith("approved:") for r in record.reasons):
        return "hold", reasons  # it was held, then a reviewer approved it
    if any(r.startswith("break_glass:") for r in record.reasons) or record.outcome == "would_deny":
        return _held_or_denied(reasons), reasons
    return record.outcome, reasons


class Replayer:
    """Re-decides recorded decisions with ``intents`` and ``engine``; writes nothing."""

    def __init__(self, store: Store, intents: IntentRegistry, engine: PolicyEngine, *,
                 environment: str = "prod", policy_timeout: float = 5.0) -> None:
        self.store = store
        self.intents = intents
        self.engine = engine
        self.environment = environment
        self.policy_timeout = policy_timeout
        self._tasks: dict[str, Task | None] = {}

    async def _task(self, task_id: str) -> Task | None:
        if task_id not in self._tasks:
            await self._prefetch([task_id])
        return self._tasks.get(task_id)

    async def _prefetch(self, task_ids: list[str]) -> None:
        """Load the tasks a batch refers to in one query (cached; the cache is bounded)."""
        wanted = sorted({t for t in task_ids if t and t not in self._tasks})
        if not wanted:
            return
        if len(self._tasks) > 50_000:
            self._tasks.clear()
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            found = await self.store.get_tasks(chunk)
            self._tasks.update({t: found.get(t) for t in chunk})

    async def replay_one(self, record: DecisionRecord) -> tuple[str, list[str]] | str:
        """The candidate verdict ``(outcome, reasons)``, or why the decision cannot be replayed."""
        if _replayable_begin(record):
            return await self._replay_begin(record.policy_input or {})
        if record.policy_input is None or record.policy_result is None:
            return "decided before the policy"
        if record.kind in _READS:
            return read_verdict(await self._evaluate(record.policy_input))
        if record.kind != "tools/call":
            return f"kind {record.kind}"
        if record.arguments is None or "/arguments" in record.masked:
            return "arguments not recorded"
        task = await self._task(record.task_id or "")
        if task is None:
            return "task not found"
        pinput = record.policy_input
        recorded_task = pinput.get("task") or {}
        # steps the task had taken then: counted in the input since the history became a bounded
        # summary; before that the input listed the whole history
        taken = recorded_task.get("steps_taken", len(recorded_task.get("history") or []))
        status = "active"
        if any(r.startswith("task_ended") for r in record.reasons):
            status = task.status
        then = task.with_history((task.history or [])[:taken]).model_copy(update={"status": status, "ended_at": None})
        intent = self.intents.get(task.intent)
        if intent is None:
            return "deny", ["unknown_intent"]
        agent = AgentIdentity(id=record.agent, claims=(pinput.get("agent") or {}).get("claims") or {})
        call = CallRequest(agent=agent, task_id=task.id, step=record.step, upstream=record.upstream or "-",
                           tool=(record.tool or "-").partition(".")[2] or "-", untrusted_arguments=record.arguments)
        wf = check_call(intent, then, agent_id=agent.id, step=record.step or "", tool=call.qualified_tool,
                        arguments=record.arguments, now=record.at)
        context = pinput.get("context") or {}
        candidate_input = policy_input(call, intent, then, wf, record.at, context.get("mode") or "enforce",
                                       self.environment)
        uses = _recorded_uses(intent, then, call, pinput)
        if uses:
            candidate_input["usage"] = usage_document(uses)
        result = await self._evaluate(candidate_input)
        step = intent.steps.get(record.step or "")
        outcome, reasons = verdict_of(wf, result, step.approval if step else "never")
        return budget_verdict(outcome, reasons, [u for u in uses if u.exceeded])

    async def _replay_begin(self, pinput: dict[str, Any]) -> tuple[str, list[str]] | str:
        """A task begin against the candidate intents (who may begin it, for whom, with what)
        and the candidate policy, from the input recorded then (usage as it stood)."""
        name = (pinput.get("intent") or {}).get("name")
        intent = self.intents.get(name) if isinstance(name, str) else None
        agent = (pinput.get("agent") or {}).get("id") or ""
        issuer = pinput.get("issuer")
        params = pinput.get("params")
        if intent is None:
            return "deny", [ReasonCode.UNKNOWN_INTENT.value]
        if not intent.permits_agent(agent):
            return "deny", [ReasonCode.AGENT_NOT_PERMITTED.value]
        modes = self.intents.begin_modes(intent)
        if not isinstance(issuer, dict) and "agent" not in modes:
            return "deny", [ReasonCode.TASK_ISSUER_REQUIRED.value]
        if isinstance(issuer, dict) and "issuer" not in modes:
            return "deny", [reason(ReasonCode.ISSUER_NOT_PERMITTED, issuer.get("name"))]
        if not isinstance(params, dict) or intent.param_errors(params):
            return "deny", [ReasonCode.INVALID_PARAMS.value]
        result = await self._evaluate({**pinput, "intent": {"name": intent.name, "version": intent.version}})
        if result.allow and not result.hold:
            return "allow", []
        head = ReasonCode.POLICY_DENIED if not result.allow else ReasonCode.POLICY_HOLD
        return "deny", [head.value, *(reason(ReasonCode.POLICY, r) for r in result.reasons)]

    async def _evaluate(self, pinput: dict[str, Any]) -> PolicyResult:
        async with asyncio.timeout(self.policy_timeout):
            return await self.engine.evaluate(pinput)

    async def replay(
        self,
        records: list[DecisionRecord] | Any,
        *,
        until: float | None = None,
        progress: Callable[[int], None] | None = None,
        keep_changes: int = 1000,
    ) -> ReplayReport:
        """Replay ``records`` (an iterable, or an async iterable of batches)."""
        report = ReplayReport(policy_revision=self.engine.revision, intents_revision=self.intents.revision)
        transitions: Counter[str] = Counter()
        skipped: Counter[str] = Counter()
        started = time.perf_counter()

        async def one(record: DecisionRecord) -> None:
            if until is not None and record.at > until or record.kind in REVIEW_KINDS:
                return  # reviewer and operator actions are records of the log, not decisions
            before = _recorded_verdict(record)
            after = await self.replay_one(record)
            report.checked += 1
            if isinstance(after, str) or before is None:
                skipped[after if isinstance(after, str) else "decided before the policy"] += 1
                return
            if before[0] == after[0]:
                report.unchanged += 1
                return
            transitions[f"{before[0]}->{after[0]}"] += 1
            if len(report.changes) < keep_changes:
                report.changes.append(ReplayChange(
                    decision_id=record.id, seq=record.seq or 0, at=record.at, kind=record.kind, agent=record.agent,
                    intent=record.intent, step=record.step, tool=record.tool, before=before[0], after=after[0],
                    before_reasons=before[1], after_reasons=after[1],
                ))

        if hasattr(records, "__aiter__"):
            async for batch in records:
                await self._prefetch([r.task_id for r in batch if r.kind == "tools/call" and r.task_id])
                for record in batch:
                    await one(record)
                if progress:
                    progress(len(batch))
        else:
            for record in records:
                await one(record)
                if progress:
                    progress(1)
        report.transitions = dict(transitions)
        report.skipped = dict(skipped)
        report.seconds = time.perf_counter() - started
        report.decisions_per_second = report.checked / report.seconds if report.seconds > 0 else 0.0
        return report

