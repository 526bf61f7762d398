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
  each argument's JSON Schema, and their bindings (task parameters, what an earlier step was
  called with, or what it returned; see ``bindings``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .bindings import Binding, judge
from .errors import ReasonCode, reason
from .intents import Intent

__all__ = [
    "RECENT_STEPS",
    "HistoryEntry",
    "RecentStep",
    "Task",
    "TaskState",
    "TaskStatus",
    "WorkflowResult",
    "allowed_next",
    "candidates",
    "check_call",
]

TaskStatus = Literal["active", "completed", "ended", "expired"]


class HistoryEntry(BaseModel):
    """One step a task has taken (an allowed, or shadow-allowed, call)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    step: str
    tool: str
    decision: Literal["allow", "would_deny"]
    decision_id: str
    at: float
    arguments: dict[str, Any] = Field(default_factory=dict)


RECENT_STEPS = 20  # latest steps a task's state (and so the policy input) lists


class RecentStep(BaseModel):
    """One of a task's latest steps, as the policy input lists it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    step: str
    tool: str
    decision: Literal["allow", "would_deny"]


class TaskState(BaseModel):
    """What the workflow check needs from a task's past, kept compact: its size depends on the
    intent's steps, never on how many calls the task has made.

    The decision path reads and writes only this (one row, updated in place); the full history
    is appended one row per step beside it (``task_steps``), for reviewers and replay.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    calls: int = Field(default=0, description="steps taken so far")
    counts: dict[str, int] = Field(default_factory=dict, description="calls per step")
    last_at: dict[str, int] = Field(default_factory=dict, description="step -> number (1-based) of its latest call")
    last_arguments: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="step -> the arguments of its latest call (for bindings)")
    recent: list[RecentStep] = Field(default_factory=list, description=f"the latest {RECENT_STEPS} steps, oldest first")

    def after(self, entry: HistoryEntry) -> TaskState:
        """The state once ``entry`` is taken."""
        n = self.calls + 1
        recent = [*self.recent[-(RECENT_STEPS - 1):], RecentStep(step=entry.step, tool=entry.tool,
                                                                 decision=entry.decision)]
        return TaskState(
            calls=n,
            counts={**self.counts, entry.step: self.counts.get(entry.step, 0) + 1},
            last_at={**self.last_at, entry.step: n},
            last_arguments={**self.last_arguments, entry.step: entry.arguments},
            recent=recent,
        )

    @classmethod
    def of(cls, history: list[HistoryEntry]) -> TaskState:
        """The state a task has after ``history`` (a replay, a migration, a test)."""
        state = cls()
        for entry in history:
            state = state.after(entry)
        return state

    @property
    def last_step(self) -> str | None:
        return max(self.last_at, key=self.last_at.__getitem__) if self.last_at else None


class Task(BaseModel):
    """A running instance of an intent, owned by one agent.

    ``state`` is what the workflow check reads; ``history`` is every step taken, loaded for
    reviewers and replay and ``None`` on the decision path (where it is not read).  A task
    built with a history and no state gets the state that history gives.
    """

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
    history: list[HistoryEntry] | None = Field(default_factory=list)
    state: TaskState = Field(default_factory=TaskState)
    version: int = 0
    issuer: str | None = Field(default=None, description="the task issuer that began it; None: the agent itself")
    results: dict[str, dict[str, list[Any]]] = Field(
        default_factory=dict, description="values kept from steps' results for bindings: step -> path -> values")

    @model_validator(mode="before")
    @classmethod
    def _state_from_history(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("history") and data.get("state") is None:
            history = [h if isinstance(h, HistoryEntry) else HistoryEntry.model_validate(h) for h in data["history"]]
            data = {**data, "history": history, "state": TaskState.of(history)}
        return data

    def with_history(self, history: list[HistoryEntry]) -> Task:
        """This task as it was after ``history`` (a prefix of its own: the decision page, replay)."""
        return self.model_copy(update={"history": history, "state": TaskState.of(history)})

    @property
    def last_step(self) -> str | None:
        return self.state.last_step

    def last_ordered_step(self, free: set[str]) -> str | None:
        """The latest step taken that is not a free one (free steps do not move the workflow)."""
        ordered = {s: n for s, n in self.state.last_at.items() if s not in free}
        return max(ordered, key=ordered.__getitem__) if ordered else None

    def taken(self) -> dict[str, int]:
        """Calls per step so far."""
        return dict(self.state.counts)

    def calls_of(self, step: str) -> int:
        return self.state.counts.get(step, 0)

    def is_expired(self, now: float) -> bool:
        return now >= self.expires_at


class WorkflowResult(BaseModel):
    """Verdict of the graph check; ``violations`` are rendered reason strings."""

    model_config = ConfigDict(frozen=True)

    ok: bool
    violations: list[str]
    allowed_next: list[str]
    terminal: bool = False


def candidates(binding: Binding, task: Task) -> list[Any]:
    """The values the task holds for a binding (empty: none yet)."""
    if binding.source == "params":
        return [task.params[binding.name]] if binding.name in task.params else []
    if binding.source == "result":
        return list(task.results.get(binding.name, {}).get(binding.path, []))
    value: Any = task.state.last_arguments.get(binding.name)
    if value is None:
        return []
    for part in binding.keys:
        if not isinstance(value, dict) or part not in value:
            return []
        value = value[part]
    return [value]


def _in_order(intent: Intent, task: Task) -> list[str]:
    """Steps the graph allows now, ``max_calls`` aside: after the task's latest ordered step
    (or a start step, or within the group it is in), and every free step."""
    free = intent.free_steps()
    last = task.last_ordered_step(set(free)) if free else task.last_step
    ordered = intent.start_or_next(last, task.taken() if intent.groups else None)
    return [*ordered, *(f for f in free if f not in ordered)]


def allowed_next(intent: Intent, task: Task) -> list[str]:
    """Steps the task may take now (graph and ``max_calls`` both considered)."""
    taken = task.taken()
    return [s for s in _in_order(intent, task) if s in intent.steps and taken.get(s, 0) < intent.steps[s].max_calls]


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

    if step not in _in_order(intent, task):
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
        if rule.binding is not None:
            verdict = judge(rule.binding, candidates(rule.binding, task), value)
            if verdict == "unresolved":
                violations.append(reason(ReasonCode.BINDING_UNRESOLVED, name))
            elif verdict == "mismatch":
                violations.append(reason(ReasonCode.BINDING_MISMATCH, name))

    return WorkflowResult(
        ok=not violations,
        violations=violations,
        allowed_next=nexts,
        terminal=intent.is_terminal(step),
    )
