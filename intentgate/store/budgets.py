"""Budgets: what allowed calls spent, summed over a sliding window, spent atomically.

A budget's window is kept as 60 slices (``window / 60`` seconds each, at least one): a spend
adds to the slice it falls in (one upsert), and what the budget has used is the sum of the
slices that overlap the window, the oldest one counted whole.  That errs on the safe side (a
spend leaves the window up to one slice late, never early) and costs at most 61 rows,
however many calls were made.

Spending happens in the decision's own transaction: it takes the budget's lock (on PostgreSQL
a transaction-level advisory lock on the budget and scope; SQLite's write lock already
serialises every writer), sums the window, and adds the spend only if it stays within the
limit.  Two replicas racing for the last of a budget cannot both spend it: the second sees
the first's committed spend once it gets the lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from .compiled import OnSqliteCursor
from .tables import BudgetUsageRow

__all__ = ["SLICES", "BudgetSpend", "bucket_seconds", "budget_used", "purge_usage", "spend_budgets"]

usage_t = BudgetUsageRow.__table__
SLICES = 60
_EPSILON = 1e-9  # sums of decimal amounts in binary floating point: 0.1 + 0.2 may not be 0.3

_USED = select(func.coalesce(func.sum(usage_t.c.amount), 0.0)).where(
    usage_t.c.budget == bindparam("budget"), usage_t.c.scope == bindparam("scope"),
    usage_t.c.bucket_start > bindparam("since"),
)
_PG_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")


def _upsert(insert: Any) -> Any:
    stmt = insert(usage_t).values(budget=bindparam("budget"), scope=bindparam("scope"),
                                  bucket_start=bindparam("bucket_start"), amount=bindparam("amount"), calls=1)
    return stmt.on_conflict_do_update(
        index_elements=["budget", "scope", "bucket_start"],
        set_={"amount": usage_t.c.amount + stmt.excluded.amount, "calls": usage_t.c.calls + 1},
    )


_used = OnSqliteCursor(_USED)
_add_spend = OnSqliteCursor(_upsert(sqlite_insert), _upsert(pg_insert))  # built once, per dialect


def bucket_seconds(window_seconds: int) -> float:
    return float(max(1, window_seconds // SLICES))


@dataclass(frozen=True)
class BudgetSpend:
    """One budget an allowed call spends: ``amount`` of ``budget`` for ``scope`` (its per values).

    ``enforce`` is False for a call a reviewer let through (an approval or a break-glass
    grant): it is counted, not refused.
    """

    budget: str
    scope: str
    amount: float
    limit: float
    window_seconds: int
    enforce: bool = True


def budget_used(conn: Connection, budget: str, scope: str, *, now: float, window_seconds: int) -> float:
    """What the budget has spent in the window ending at ``now`` (slices overlapping it, whole)."""
    since = now - window_seconds - bucket_seconds(window_seconds)
    return float(_used(conn, {"budget": budget, "scope": scope, "since": since}).fetchone()[0])


def _add(conn: Connection, spend: BudgetSpend, now: float) -> None:
    size = bucket_seconds(spend.window_seconds)
    _add_spend(conn, {"budget": spend.budget, "scope": spend.scope, "bucket_start": (now // size) * size,
                      "amount": spend.amount})


def spend_budgets(conn: Connection, spends: list[BudgetSpend], *, now: float) -> str | None:
    """Spend every budget of a call, or none: the name of the first one that would be exceeded
    (the caller rolls the transaction back), or None once all were spent."""
    for s in sorted(spends, key=lambda s: (s.budget, s.scope)):  # one lock order: no deadlock
        if conn.dialect.name == "postgresql":
            conn.execute(_PG_LOCK, {"key": f"{s.budget}\x1f{s.scope}"})
        if s.enforce:
            used = budget_used(conn, s.budget, s.scope, now=now, window_seconds=s.window_seconds)
            if used + s.amount > s.limit + _EPSILON:
                return s.budget
        _add(conn, s, now)
    return None


def purge_usage(conn: Connection, *, before: float) -> int:
    """Forget slices that end before every window that could still count them."""
    return conn.execute(delete(usage_t).where(usage_t.c.bucket_start <= before)).rowcount or 0
