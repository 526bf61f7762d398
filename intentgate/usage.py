"""What calls spend of intents' budgets, and the ``usage`` the policy sees.

A budget (``intents``: ``budgets:``) is kept per scope: the values of its ``per`` entries for
one call (``{"agent": ..., "arguments.currency": "EUR"}``), as canonical JSON.  A call to the
budget's step spends 1 (a count) or the value of its ``sum`` argument (negative values spend
nothing: a budget is never credited; a value that is not a number cannot be measured against
the budget and counts as exceeding it).  The store sums spends over the budget's window.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .intents import Budget, Intent

__all__ = ["BudgetUse", "begin_budget_uses", "call_budget_uses", "usage_document"]


@dataclass(frozen=True)
class BudgetUse:
    """One budget as it stands for one call: ``used`` within the window, ``amount`` to spend."""

    name: str
    budget: Budget
    scope: str
    amount: float | None  # None: the summed argument is not a number
    used: float = 0.0

    @property
    def exceeded(self) -> bool:
        return self.amount is None or self.used + self.amount > self.budget.limit + 1e-9

    @property
    def spend(self) -> float:
        """What an allowed call adds (one a reviewer let through with an unmeasurable amount: 0)."""
        return self.amount or 0.0

    def with_used(self, used: float) -> BudgetUse:
        return BudgetUse(self.name, self.budget, self.scope, self.amount, used)

    def document(self) -> dict[str, Any]:
        b = self.budget
        return {"used": self.used, "limit": b.limit, "remaining": max(0.0, b.limit - self.used),
                "this_call": self.amount, "window_seconds": b.window_seconds, "on_exceed": b.on_exceed,
                "kind": "count" if b.sum is None else "sum", "scope": self.scope}


def _scope(budget: Budget, *, agent: str, intent: str, params: dict[str, Any],
           arguments: dict[str, Any] | None) -> str | None:
    """The budget's per values as canonical JSON; None if they need arguments not given."""
    values: dict[str, Any] = {}
    for entry in budget.per:
        if entry == "agent":
            values[entry] = agent
        elif entry == "intent":
            values[entry] = intent
        elif entry.startswith("params."):
            values[entry] = params.get(entry[7:])
        else:
            if arguments is None:
                return None
            values[entry] = arguments.get(entry[10:])
    try:  # deterministic (sorted keys, no spaces): the key a budget is stored under
        return json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):  # a value that is not plain JSON: one scope for all such calls
        return json.dumps({k: repr(v)[:200] for k, v in values.items()}, sort_keys=True, separators=(",", ":"))


def _amount(budget: Budget, arguments: dict[str, Any]) -> float | None:
    if budget.sum is None:
        return 1.0
    value = arguments.get(budget.sum)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return None  # not a number (a schema that lets one through): fail closed, count it as too much
    return max(0.0, float(value))


def call_budget_uses(intent: Intent, step: str, *, agent: str, params: dict[str, Any],
                     arguments: dict[str, Any]) -> list[BudgetUse]:
    """The budgets a call to ``step`` would spend, ``used`` not yet read."""
    out = []
    for name, budget in intent.budgets_of(step):
        scope = _scope(budget, agent=agent, intent=intent.name, params=params, arguments=arguments)
        assert scope is not None
        out.append(BudgetUse(name, budget, scope[:1024], _amount(budget, arguments)))
    return out


def begin_budget_uses(intent: Intent, *, agent: str, params: dict[str, Any]) -> list[BudgetUse]:
    """The intent's budgets whose scope is known when a task begins (no per-argument ones)."""
    out = []
    for name, budget in intent.budgets.items():
        scope = _scope(budget, agent=agent, intent=intent.name, params=params, arguments=None)
        if scope is not None:
            out.append(BudgetUse(name, budget, scope[:1024], 0.0))
    return out


def usage_document(uses: list[BudgetUse], open_tasks: dict[str, int] | None = None) -> dict[str, Any]:
    """``input.usage``: ``{"budgets": {name: {...}}, "open_tasks": {intent: n}}`` (the latter on task/begin)."""
    doc: dict[str, Any] = {"budgets": {u.name: u.document() for u in uses}}
    if open_tasks is not None:
        doc["open_tasks"] = dict(open_tasks)
    return doc
