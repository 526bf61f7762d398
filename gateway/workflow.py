"""Tasks and workflow conformance.

A call for step S of a task is conformant iff all of these hold (each failure is one
violation with its reason code; every violation is reported, not just the first):

- the task is active (not ended/completed), not expired, and owned by the caller;
- S is a step of the intent;
- S is a start step and the task has taken no step, or S is in ``next`` of the task's
  latest allowed step;
- S's ``tool`` is the tool being called;
- S has been called fewer than ``max_calls`` times in this task;
- the arguments carry every non-optional declared argument, no undeclared one, satisfy
  each argument's JSON Schema, and equal their bindings (task parameters or what an earlier
  step was called with).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .canonical import canonical_json
from .errors import ReasonCode, reason
from .intents import Intent

__all__ = [
    "HistoryEntry",
    "Task",
    "TaskStatus",
    "WorkflowResult",
    "allowed_next",
    "check_call",
    "resolve_binding",
]

TaskStatus = Literal["active", "completed", "ended", "expired"]

_MISSING = object()


class HistoryEntry(BaseModel):
    """One step a task has taken (an allowed, or shadow-allowed, call)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    step: str
    tool: str
    decision: Literal["allow", "would_deny"]
    decision_id: str
    at: float
    arguments: dict[str, Any] = Field(default_factory=dict)


class Task(BaseModel):
    """A running instance of an intent, owned by one agent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    intent: str
    intent_version: str
    agent: str
    params: dict[str, Any]
    reason: str
    status: TaskStatus = "active"
    created_at: float
    expires_at: float
    ended_at: float | None = None
    history: list[HistoryEntry] = Field(default_factory=list)
    version: int = 0
    issuer: str | None = Field(default=None, description="the task issuer that began it; None: the agent itself")

    @property
    def last_step(self) -> str | None:
        return self.history[-1].step if self.history else None

    def calls_of(self, step: str) -> int:
        return sum(1 for h in self.history if h.step == step)

    def is_expired(self, now: float) -> bool:
        return now >= self.expires_at


class WorkflowResult(BaseModel):
    """Verdict of the graph check; ``violations`` are rendered reason strings."""

    model_config = ConfigDict(frozen=True)

    ok: bool
    violations: list[str]
    allowed_next: list[str]
    terminal: bool = False


def resolve_binding(bind: str, task: Task) -> Any:
    """Value a binding refers to, or ``_MISSING`` if the task has no such value yet."""
    head, _, rest = bind.partition(".")
    if head == "params":
        return task.params.get(rest, _MISSING)
    # steps.<step>.arguments.<path>
    step, _, path = rest.partition(".arguments.")
    taken = [h for h in task.history if h.step == step]
    if not taken:
        return _MISSING
    value: Any = taken[-1].arguments
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _same(a: Any, b: Any) -> bool:
    """JSON-value equality: ``true`` is not ``1`` (unlike Python), ``1`` is ``1.0``."""
    try:
        return canonical_json(a) == canonical_json(b)
    except Exception:  # noqa: BLE001 - unserialisable (NaN, huge int): never equal
        return False


def allowed_next(intent: Intent, task: Task) -> list[str]:
    """Steps the task may take now (graph and ``max_calls`` both considered)."""
    return [
        s
        for s in intent.start_or_next(task.last_step)
        if s in intent.steps and task.calls_of(s) < intent.steps[s].max_calls
    ]


def check_call(
    intent: Intent,
    task: Task,
    *,
    agent_id: str,
    step: str,
    tool: str,
    arguments: dict[str, Any],
    now: float,
) -> WorkflowResult:
    """Check one call against the intent's graph; ``tool`` is ``upstream.tool``."""
    violations: list[str] = []
    if task.agent != agent_id:
        violations.append(reason(ReasonCode.TASK_NOT_OWNED))
    if task.status != "active":
        violations.append(reason(ReasonCode.TASK_ENDED, task.status))
    elif task.is_expired(now):
        violations.append(reason(ReasonCode.TASK_EXPIRED))

    nexts = allowed_next(intent, task)
    spec = intent.steps.get(step)
    if spec is None:
        violations.append(reason(ReasonCode.UNKNOWN_STEP, step))
        return WorkflowResult(ok=False, violations=violations, allowed_next=nexts)

    if step not in intent.start_or_next(task.last_step):
        violations.append(reason(ReasonCode.STEP_OUT_OF_ORDER, step))
    elif task.calls_of(step) >= spec.max_calls:
        violations.append(reason(ReasonCode.MAX_CALLS_EXCEEDED, step))
    if spec.tool != tool:
        violations.append(reason(ReasonCode.TOOL_MISMATCH, tool))

    rules = intent.rules(step)
    for name in arguments:
        if name not in rules:
            violations.append(reason(ReasonCode.ARGUMENT_NOT_ALLOWED, name))
    for name, rule in rules.items():
        if name not in arguments:
            if not rule.optional:
                violations.append(reason(ReasonCode.ARGUMENT_MISSING, name))
            continue
        value = arguments[name]
        if rule.schema_errors(value):
            violations.append(reason(ReasonCode.ARGUMENT_CONSTRAINT, name))
        if rule.bind is not None:
            expected = resolve_binding(rule.bind, task)
            if expected is _MISSING:
                violations.append(reason(ReasonCode.BINDING_UNRESOLVED, name))
            elif not _same(value, expected):
                violations.append(reason(ReasonCode.BINDING_MISMATCH, name))

    return WorkflowResult(
        ok=not violations,
        violations=violations,
        allowed_next=nexts,
        terminal=spec.terminal,
    )
