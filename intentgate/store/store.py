"""The store: tasks, the decision log, tokens and approvals.

Every state change that must be atomic is one conditional UPDATE (burning a jti, a task
moving one step, approving once), so it holds across gateway replicas sharing PostgreSQL.
Decision rows are appended without any shared lock: each carries its own hash (its Merkle
leaf hash, ``records.entry_hash``) and gets its ``seq`` from the database.  The sealer
(``ledger.py``) later puts them into the Merkle tree and signs a checkpoint over it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Protocol

from sqlalchemy import JSON, Connection, and_, bindparam, func, insert, select, update

from ..bindings import MAX_CALLS_KEPT
from ..errors import StoreError
from ..verify import ConsumeOutcome
from ..workflow import HistoryEntry, Task
from . import ledger, queries, rollup
from .ledger import append_decision as _append_decision
from .budgets import BudgetSpend, budget_used, purge_usage, spend_budgets
from .compiled import OnSqliteCursor as _OnSqliteCursor
from .compiled import json_value
from .db import Database
from .grants import GrantStore, use_grant
from .records import ApprovalRecord, DecisionRecord, TokenRecord
from .taskrows import histories_of, insert_step, task_from_row, task_row_values, task_with_history
from .tables import (
    ApprovalRow,
    DecisionRow,
    OutcomeRow,
    TaskGrantRow,
    TaskResultRow,
    TaskRow,
    TokenRow,
)

__all__ = ["ApprovalConflict", "CommitResult", "GrantUse", "KeptValues", "Store", "StoreEvents", "TaskAdvance"]

tasks_t = TaskRow.__table__
decisions_t = DecisionRow.__table__
tokens_t = TokenRow.__table__
approvals_t = ApprovalRow.__table__
outcomes_t = OutcomeRow.__table__
task_grants_t = TaskGrantRow.__table__
task_results_t = TaskResultRow.__table__

# Statements built once with bind parameters: SQLAlchemy compiles each once and caches it,
# so the hot path costs a cache lookup instead of building and coercing literal values.
_GET_TASK = select(tasks_t).where(tasks_t.c.id == bindparam("task_id"))
_INSERT_TOKEN = insert(tokens_t)
_INSERT_APPROVAL = insert(approvals_t)
_ADVANCE_TASK = (
    update(tasks_t)
    .where(
        and_(
            tasks_t.c.id == bindparam("task_id"),
            tasks_t.c.version == bindparam("expected_version"),
            tasks_t.c.status == "active",
        )
    )
    .values(
        state=bindparam("new_state"),
        version=bindparam("new_version"),
        status=bindparam("new_status"),
        ended_at=bindparam("new_ended_at"),
    )
)
_CONSUME_TOKEN = (
    update(tokens_t)
    .where(and_(tokens_t.c.jti == bindparam("token_jti"), tokens_t.c.status == "issued"))
    .values(status="consumed", consumed_at=bindparam("now"))
)
_TOKEN_STATUS = select(tokens_t.c.status).where(tokens_t.c.jti == bindparam("token_jti"))
_INSERT_TASK = insert(tasks_t)
OPEN_TASKS_CAP = 100  # counting open tasks stops here: a flood of tasks costs no more than this to count
_OPEN_TASKS = select(func.count()).select_from(
    select(tasks_t.c.id).where(
        tasks_t.c.agent == bindparam("agent"), tasks_t.c.intent == bindparam("intent"),
        tasks_t.c.status == "active", tasks_t.c.expires_at > bindparam("now"),
    ).limit(OPEN_TASKS_CAP).subquery()
)

_get_task = _OnSqliteCursor(_GET_TASK)
_insert_token = _OnSqliteCursor(_INSERT_TOKEN)
_advance_task = _OnSqliteCursor(_ADVANCE_TASK)
_consume_token = _OnSqliteCursor(_CONSUME_TOKEN)
_token_status = _OnSqliteCursor(_TOKEN_STATUS)
_insert_task = _OnSqliteCursor(_INSERT_TASK)
_task_results = _OnSqliteCursor(
    select(task_results_t.c.step, task_results_t.c.path, task_results_t.c.found)
    .where(task_results_t.c.task_id == bindparam("task_id"))
    .order_by(task_results_t.c.at, task_results_t.c.decision_id)
    .limit(bindparam("cap"))
)
_open_tasks = _OnSqliteCursor(_OPEN_TASKS)


class TaskAdvance:
    """Move a task one step: append ``entry`` if the task is still at ``expected_version``.

    What is written costs the same at every step: the task's compact state, replaced on its
    row, and one ``task_steps`` row for the step."""

    __slots__ = ("complete", "entry", "expected_version", "state", "task_id")

    def __init__(self, task: Task, entry: HistoryEntry, *, complete: bool) -> None:
        self.task_id = task.id
        self.expected_version = task.version
        self.state = task.state.after(entry)
        self.entry = entry
        self.complete = complete


class CommitResult:
    """``conflict`` says which race was lost when nothing was committed: ``step`` (the task
    moved on), ``approval``, ``grant``, ``budget:<name>`` or ``task_grant`` (already used)."""

    __slots__ = ("committed", "conflict", "revoked", "seq")

    def __init__(self, committed: bool, seq: int | None = None, revoked: int = 0, conflict: str | None = None) -> None:
        self.committed = committed
        self.seq = seq
        self.revoked = revoked
        self.conflict = conflict


class GrantUse:
    """A task grant being used to begin a task: its ``jti`` is recorded once, ever."""

    __slots__ = ("agent", "expires_at", "issuer", "jti")

    def __init__(self, jti: str, *, issuer: str, agent: str, expires_at: float) -> None:
        self.jti, self.issuer, self.agent, self.expires_at = jti, issuer, agent, expires_at


class StoreEvents(Protocol):
    """Told about what was committed (metrics); called after the transaction, never inside it."""

    def decision(self, record: DecisionRecord) -> None: ...

    def tokens_revoked(self, count: int) -> None: ...

    def token_consumed(self) -> None: ...


class _Lost(Exception):
    """Raised inside a transaction to roll back what it wrote: a race was lost (``why``)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class ApprovalConflict(Exception):
    """An approval could not be decided: unknown, already decided, or expired."""

    def __init__(self, why: str, approval: ApprovalRecord | None = None) -> None:
        super().__init__(why)
        self.why = why
        self.approval = approval


class KeptValues:
    """What one call's result held at the paths later bindings read: ``{path: [values]}``."""

    __slots__ = ("dropped", "step", "task_id", "values")

    def __init__(self, task_id: str, step: str, values: dict[str, list[Any]], dropped: set[str]) -> None:
        self.task_id, self.step, self.values, self.dropped = task_id, step, values, dropped


def _results_of(conn: Connection, task_id: str) -> dict[str, dict[str, list[Any]]]:
    """Every value kept for a task's bindings: step -> path -> values, in the order found."""
    out: dict[str, dict[str, list[Any]]] = {}
    for step, path, values in _task_results(conn, {"task_id": task_id, "cap": MAX_CALLS_KEPT * 8}):
        out.setdefault(step, {}).setdefault(path, []).extend(json_value(values))
    return out


def _revoke_task_tokens(conn: Connection, task_id: str, now: float, keep: str | None = None) -> int:
    cond = and_(tokens_t.c.task_id == task_id, tokens_t.c.status == "issued")
    if keep is not None:
        cond = and_(cond, tokens_t.c.jti != keep)
    res = conn.execute(update(tokens_t).where(cond).values(status="revoked", revoked_at=now))
    return res.rowcount or 0


class Store:
    """Async facade over the database; every method is one transaction."""

    def __init__(self, database: Database) -> None:
        self.db = database
        self.grants = GrantStore(database)
        self.events: StoreEvents | None = None
        self.committed = 0  # decisions this process has committed (the sealer's trigger)

    def _committed(self, records: list[DecisionRecord], revoked: int = 0) -> None:
        self.committed += len(records)
        if self.events is not None:
            for record in records:
                self.events.decision(record)
            self.events.tokens_revoked(revoked)

    @classmethod
    def open(cls, url: str, *, migrate: bool = True, **kwargs: Any) -> Store:
        """Open the database and bring its schema to the newest revision (see ``migrate``).

        With ``migrate=False`` a database whose schema is not current is refused instead.
        """
        store = cls(Database(url, **kwargs))
        try:
            from .migrate import ensure_schema  # alembic: loaded only by whoever opens a store

            ensure_schema(store.db, migrate=migrate)
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        self.db.close()

    # ----- tasks ---------------------------------------------------------------------
    async def get_task(self, task_id: str) -> Task | None:
        """A task with its whole history (reviewers, the CLI); the decision path reads the
        compact state only (``get_task_and_usage``)."""

        def op(conn: Connection) -> Task | None:
            row = _get_task(conn, {"task_id": task_id}).fetchone()
            return task_with_history(conn, row) if row else None

        return await self.db.run(op, read_only=True)

    async def get_task_and_usage(
        self, task_id: str, budgets: Callable[[Task], list[tuple[str, str, int]]], now: float,
        *, with_results: Callable[[Task], bool] = lambda task: False,
    ) -> tuple[Task | None, list[float]]:
        """A task, and in the same read what each ``(budget, scope, window_seconds)`` that
        ``budgets(task)`` names has spent within its window (one transaction, not two); with
        the values kept from its results when ``with_results(task)``."""

        def op(conn: Connection) -> tuple[Task | None, list[float]]:
            row = _get_task(conn, {"task_id": task_id}).fetchone()
            if row is None:
                return None, []
            task = task_from_row(row)
            if with_results(task):
                task = task.model_copy(update={"results": _results_of(conn, task.id)})
            return task, [budget_used(conn, b, sc, now=now, window_seconds=w) for b, sc, w in budgets(task)]

        return await self.db.run(op, read_only=True)

    async def get_tasks(self, task_ids: list[str]) -> dict[str, Task]:
        """Several tasks with their histories, in two queries (replay, reviewer pages); missing
        ids are left out."""

        def op(conn: Connection) -> dict[str, Task]:
            rows = conn.execute(select(tasks_t).where(tasks_t.c.id.in_(task_ids))).all()
            histories = histories_of(conn, [r.id for r in rows])
            return {r.id: task_from_row(r, histories.get(r.id, [])) for r in rows}

        return await self.db.run(op, read_only=True) if task_ids else {}

    async def begin_task(self, task: Task, record: DecisionRecord, *, grant: GrantUse | None = None) -> CommitResult:
        """Insert a new task together with the decision that allowed it.

        With ``grant``, the task grant's ``jti`` is recorded in the same transaction; if it
        already began a task (on any replica), nothing is written and ``conflict`` is
        ``task_grant``.
        """

        def op(conn: Connection) -> CommitResult:
            if grant is not None:
                seen = conn.execute(select(task_grants_t.c.jti).where(task_grants_t.c.jti == grant.jti)).first()
                if seen is not None:
                    return CommitResult(False, conflict="task_grant")
                # the primary key settles a race between two transactions that both looked
                conn.execute(insert(task_grants_t).values(jti=grant.jti, issuer=grant.issuer, agent=grant.agent,
                                                          task_id=task.id, used_at=record.at,
                                                          expires_at=grant.expires_at))
            _insert_task(conn, task_row_values(task))
            return CommitResult(True, _append_decision(conn, record))

        try:
            result = await self.db.run(op)
        except StoreError as exc:
            if grant is not None and await self._grant_used(grant.jti):
                return CommitResult(False, conflict="task_grant")  # lost the insert race on the key
            raise exc
        if result.committed:
            self._committed([record])
        return result

    async def _grant_used(self, jti: str) -> bool:
        def op(conn: Connection) -> bool:
            return conn.execute(select(task_grants_t.c.jti).where(task_grants_t.c.jti == jti)).first() is not None

        return await self.db.run(op, read_only=True)

    async def open_tasks(self, agent: str, intent: str, now: float) -> int:
        """How many active, unexpired tasks of ``intent`` the agent has (at most ``OPEN_TASKS_CAP``)."""

        def op(conn: Connection) -> int:
            return int(_open_tasks(conn, {"agent": agent, "intent": intent, "now": now}).fetchone()[0])

        return await self.db.run(op, read_only=True)

    async def budget_usage(self, keys: list[tuple[str, str, int]], now: float) -> list[float]:
        """What each ``(budget, scope, window_seconds)`` has spent within its window."""

        def op(conn: Connection) -> list[float]:
            return [budget_used(conn, b, sc, now=now, window_seconds=w) for b, sc, w in keys]

        return await self.db.run(op, read_only=True) if keys else []

    async def purge(self, *, spends_before: float, grants_before: float) -> None:
        """Drop budget spends no window counts any more, and task grants past their expiry."""

        def op(conn: Connection) -> None:
            purge_usage(conn, before=spends_before)
            conn.execute(task_grants_t.delete().where(task_grants_t.c.expires_at <= grants_before))

        await self.db.run(op)

    async def end_task(self, task_id: str, status: str, now: float, record: DecisionRecord) -> CommitResult:
        """Close an active task (``ended``/``expired``) and revoke its unconsumed tokens."""

        def op(conn: Connection) -> CommitResult:
            res = conn.execute(
                update(tasks_t)
                .where(and_(tasks_t.c.id == task_id, tasks_t.c.status == "active"))
                .values(status=status, ended_at=now, version=tasks_t.c.version + 1)
            )
            if not res.rowcount:
                return CommitResult(False)
            revoked = _revoke_task_tokens(conn, task_id, now)
            return CommitResult(True, _append_decision(conn, record), revoked)

        result = await self.db.run(op)
        if result.committed:
            self._committed([record], result.revoked)
        return result

    async def expire_tasks(self, now: float, make_record: Callable[[Task], DecisionRecord]) -> int:
        """Mark every overdue active task expired, revoke its tokens, record it. Returns count."""

        def op(conn: Connection) -> tuple[list[DecisionRecord], int]:
            rows = conn.execute(
                select(tasks_t).where(and_(tasks_t.c.status == "active", tasks_t.c.expires_at <= now))
            ).all()
            records, revoked = [], 0
            for row in rows:
                task = task_from_row(row)
                conn.execute(
                    update(tasks_t)
                    .where(and_(tasks_t.c.id == task.id, tasks_t.c.status == "active"))
                    .values(status="expired", ended_at=now, version=tasks_t.c.version + 1)
                )
                revoked += _revoke_task_tokens(conn, task.id, now)
                records.append(make_record(task))
                _append_decision(conn, records[-1])
            return records, revoked

        records, revoked = await self.db.run(op)
        self._committed(records, revoked)
        return len(records)

    # ----- decisions -----------------------------------------------------------------
    async def commit_decision(
        self,
        record: DecisionRecord,
        *,
        advance: TaskAdvance | None = None,
        token: TokenRecord | None = None,
        approval: ApprovalRecord | None = None,
        use_approval: str | None = None,
        use_grant_id: str | None = None,
        spends: list[BudgetSpend] | None = None,
    ) -> CommitResult:
        """Write a decision with its effects, atomically.

        If ``advance`` is given and the task moved on meanwhile (another call won the race
        for this step), or ``use_approval`` names an approval that is no longer approved and
        unexpired (another call used it first), or ``use_grant_id`` names a grant that expired
        or was revoked meanwhile, or a budget in ``spends`` has too little left (another call
        spent it first), nothing is written, ``committed`` is False and ``conflict`` says why.
        """

        def op(conn: Connection) -> CommitResult:
            revoked = 0
            if use_approval is not None:
                res = conn.execute(
                    update(approvals_t)
                    .where(approvals_t.c.id == use_approval, approvals_t.c.status == "approved",
                           approvals_t.c.expires_at > record.at)
                    .values(status="used", used_by_decision=record.id)
                )
                if res.rowcount != 1:
                    return CommitResult(False, conflict="approval")  # nothing written in this transaction
            if use_grant_id is not None and not use_grant(conn, use_grant_id, record.id, record.at):
                raise _Lost("grant")
            if advance is not None:
                res = _advance_task(
                    conn,
                    {
                        "task_id": advance.task_id,
                        "expected_version": advance.expected_version,
                        "new_state": advance.state.model_dump(),
                        "new_version": advance.expected_version + 1,
                        "new_status": "completed" if advance.complete else "active",
                        "new_ended_at": record.at if advance.complete else None,
                    },
                )
                if res.rowcount != 1:
                    raise _Lost("step")  # roll back the approval use above, if any
                insert_step(conn, advance.task_id, advance.state.calls, advance.entry)
                if advance.complete:
                    revoked = _revoke_task_tokens(conn, advance.task_id, record.at)
            if spends and (over := spend_budgets(conn, spends, now=record.at)):
                raise _Lost(f"budget:{over}")
            if token is not None:
                _insert_token(conn, token.model_dump())
            if approval is not None:
                conn.execute(_INSERT_APPROVAL, approval.model_dump())
            # last: on PostgreSQL the chain head's row lock serialises every replica's
            # decisions, so it is held only for the append and the commit
            seq = _append_decision(conn, record)
            return CommitResult(True, seq, revoked)

        try:
            result = await self.db.run(op)
        except _Lost as lost:
            return CommitResult(False, conflict=lost.why)
        if result.committed:
            self._committed([record], result.revoked)
            if token is not None and token.status == "consumed" and self.events is not None:
                self.events.token_consumed()  # burnt on commit (the front forwards it itself)
        return result

    async def record_outcome(
        self, decision_id: str, *, at: float, status: str, latency_ms: float, detail: str | None = None,
        kept: KeptValues | None = None,
    ) -> bool:
        """Append a call's outcome, and (``kept``) the values its result held for bindings, in one
        transaction.  False when the task already has ``MAX_CALLS_KEPT`` calls' values: these are
        not kept (a later call bound to them is refused)."""

        def op(conn: Connection) -> bool:
            conn.execute(
                insert(outcomes_t).values(
                    decision_id=decision_id, at=at, status=status, latency_ms=latency_ms, detail=detail
                )
            )
            if kept is None or not kept.values:
                return True
            calls = conn.execute(select(func.count(func.distinct(task_results_t.c.decision_id)))
                                 .where(task_results_t.c.task_id == kept.task_id)).scalar_one()
            if calls >= MAX_CALLS_KEPT:
                return False
            conn.execute(insert(task_results_t), [
                {"decision_id": decision_id, "path": path[:512], "task_id": kept.task_id, "step": kept.step, "at": at,
                 "found": values, "dropped": path in kept.dropped}
                for path, values in kept.values.items()])
            return True

        return await self.db.run(op)

    async def kept_for(self, decision_id: str) -> dict[str, list[Any]]:
        """The values one decision's result held for bindings, by path (reviewers' view)."""

        def op(conn: Connection) -> dict[str, list[Any]]:
            rows = conn.execute(select(task_results_t.c.path, task_results_t.c.found)
                                .where(task_results_t.c.decision_id == decision_id)).all()
            return {path: json_value(values) for path, values in rows}

        return await self.db.run(op, read_only=True)

    async def get_decision(self, decision_id: str) -> DecisionRecord | None:
        def op(conn: Connection) -> DecisionRecord | None:
            row = conn.execute(select(decisions_t).where(decisions_t.c.id == decision_id)).first()
            return DecisionRecord.model_validate(dict(row._mapping)) if row else None

        return await self.db.run(op, read_only=True)

    async def list_decisions(
        self,
        *,
        outcome: str | None = None,
        task_id: str | None = None,
        agent: str | None = None,
        limit: int = 100,
        before_seq: int | None = None,
    ) -> list[DecisionRecord]:
        def op(conn: Connection) -> list[DecisionRecord]:
            q = select(decisions_t)
            if outcome:
                q = q.where(decisions_t.c.outcome == outcome)
            if task_id:
                q = q.where(decisions_t.c.task_id == task_id)
            if agent:
                q = q.where(decisions_t.c.agent == agent)
            if before_seq:
                q = q.where(decisions_t.c.seq < before_seq)
            q = q.order_by(decisions_t.c.seq.desc()).limit(limit)
            return [DecisionRecord.model_validate(dict(r._mapping)) for r in conn.execute(q)]

        return await self.db.run(op, read_only=True)

    async def counts(self) -> dict[str, Any]:
        """Figures for summaries: decisions by outcome and by reason, tokens by status."""

        def op(conn: Connection) -> dict[str, Any]:
            by_outcome = dict(
                conn.execute(
                    select(decisions_t.c.outcome, func.count())
                    .where(decisions_t.c.kind == "tools/call")
                    .group_by(decisions_t.c.outcome)
                ).all()
            )
            by_reason: dict[str, int] = {}
            for (reasons,) in conn.execute(
                select(decisions_t.c.reasons).where(decisions_t.c.outcome != "allow")
            ):
                for r in reasons:
                    by_reason[r] = by_reason.get(r, 0) + 1
            tokens = dict(conn.execute(select(tokens_t.c.status, func.count()).group_by(tokens_t.c.status)).all())
            return {"by_outcome": by_outcome, "by_reason": by_reason, "tokens": tokens}

        return await self.db.run(op, read_only=True)

    # ----- reviewer reads (queries.py); never on the hot path ----------------------
    async def search_decisions(self, f: queries.DecisionFilter) -> tuple[list[DecisionRecord], int | None]:
        """One page of matching decisions, newest first, and the ``before_seq`` of the next page."""
        found = await self.db.run(queries.search_decisions, f, read_only=True)
        more = len(found) > f.limit
        page = found[: f.limit]
        return page, (page[-1].seq if more and page else None)

    async def decision_detail(self, decision_id: str) -> queries.DecisionDetailRows | None:
        return await self.db.run(queries.decision_detail, decision_id, read_only=True)

    async def decisions_from(
        self, *, after_seq: int, upto_seq: int, since: float | None = None, limit: int = 1000
    ) -> list[DecisionRecord]:
        return await self.db.run(
            lambda conn: queries.decisions_from(conn, after_seq=after_seq, upto_seq=upto_seq, since=since, limit=limit),
            read_only=True,
        )

    async def count_from(self, *, after_seq: int, upto_seq: int, since: float | None = None) -> int:
        return await self.db.run(
            lambda conn: queries.count_from(conn, after_seq=after_seq, upto_seq=upto_seq, since=since),
            read_only=True,
        )

    async def last_seq(self) -> int:
        return await self.db.run(queries.last_seq, read_only=True)

    async def decision_batches(
        self, *, since: float | None = None, after_seq: int = 0, upto_seq: int | None = None, batch: int = 1000
    ) -> AsyncIterator[list[DecisionRecord]]:
        """Decisions after ``after_seq`` (and at or after ``since``) in seq order, in batches,
        up to ``upto_seq`` (default: the newest when the iteration starts)."""
        upto = await self.last_seq() if upto_seq is None else upto_seq
        while True:
            rows = await self.decisions_from(after_seq=after_seq, upto_seq=upto, since=since, limit=batch)
            if not rows:
                return
            yield rows
            after_seq = rows[-1].seq or after_seq

    # ----- tokens --------------------------------------------------------------------
    async def consume(
        self,
        jti: str,
        *,
        expires_at: float,
        now: float,
        on_refused: Callable[[ConsumeOutcome], DecisionRecord] | None = None,
    ) -> ConsumeOutcome:
        """Burn a jti: one conditional UPDATE, so a token is used at most once.

        ``on_refused`` builds the decision that records a refusal (replayed, revoked, unknown);
        it is appended in the same transaction, so a refusal is never lost or recorded twice.
        """
        refusal: list[DecisionRecord] = []

        def op(conn: Connection) -> ConsumeOutcome:
            refusal.clear()  # a transaction rerun on another connection starts over
            res = _consume_token(conn, {"token_jti": jti, "now": now})
            if res.rowcount == 1:
                return ConsumeOutcome.CONSUMED
            found = _token_status(conn, {"token_jti": jti}).fetchone()
            status = found[0] if found else None
            outcome = (ConsumeOutcome.REPLAYED if status == "consumed"
                       else ConsumeOutcome.REVOKED if status == "revoked" else ConsumeOutcome.UNKNOWN)
            if on_refused is not None:
                refusal.append(on_refused(outcome))
                _append_decision(conn, refusal[0])
            return outcome

        outcome = await self.db.run(op)
        if outcome is ConsumeOutcome.CONSUMED and self.events is not None:
            self.events.token_consumed()
        if refusal:
            self._committed(refusal)
        return outcome

    async def issue_token(self, token: TokenRecord) -> None:
        """Record a single-use id as issued without a decision of its own (a sealed request state's,
        burnt by :meth:`consume` and revoked with its task like an action token)."""
        await self.db.run(lambda conn: _insert_token(conn, token.model_dump()))

    async def get_token(self, jti: str) -> TokenRecord | None:
        def op(conn: Connection) -> TokenRecord | None:
            row = conn.execute(select(tokens_t).where(tokens_t.c.jti == jti)).first()
            return TokenRecord.model_validate(dict(row._mapping)) if row else None

        return await self.db.run(op, read_only=True)

    # ----- approvals -----------------------------------------------------------------
    async def get_approval(self, approval_id: str) -> ApprovalRecord | None:
        def op(conn: Connection) -> ApprovalRecord | None:
            row = conn.execute(select(approvals_t).where(approvals_t.c.id == approval_id)).first()
            return ApprovalRecord.model_validate(dict(row._mapping)) if row else None

        return await self.db.run(op, read_only=True)

    async def list_approvals(self, *, status: str | None = "pending", limit: int = 200) -> list[ApprovalRecord]:
        """Approvals, oldest first (a queue), optionally of one status."""

        def op(conn: Connection) -> list[ApprovalRecord]:
            q = select(approvals_t).order_by(approvals_t.c.created_at).limit(limit)
            if status is not None:
                q = q.where(approvals_t.c.status == status)
            return [ApprovalRecord.model_validate(dict(r._mapping)) for r in conn.execute(q)]

        return await self.db.run(op, read_only=True)

    async def find_approved(
        self, *, agent: str, task_id: str, step: str, tool: str, arguments_sha256: str, policy_revision: str,
        now: float,
    ) -> ApprovalRecord | None:
        """An approved, unused, unexpired approval for exactly this call under this policy revision."""

        def op(conn: Connection) -> ApprovalRecord | None:
            t = approvals_t.c
            row = conn.execute(
                select(approvals_t)
                .where(t.task_id == task_id, t.status == "approved", t.agent == agent, t.step == step,
                       t.tool == tool, t.arguments_sha256 == arguments_sha256,
                       t.policy_revision == policy_revision, t.expires_at > now)
                .order_by(t.decided_at)
                .limit(1)
            ).first()
            return ApprovalRecord.model_validate(dict(row._mapping)) if row else None

        return await self.db.run(op, read_only=True)

    async def decide_approval(
        self, approval_id: str, *, approve: bool, reviewer: str, now: float, note: str | None = None
    ) -> ApprovalRecord:
        """Approve or reject a pending, unexpired approval, once (one conditional UPDATE).

        Raises :class:`ApprovalConflict` (``unknown``, ``expired`` or ``already <status>``).
        """

        def op(conn: Connection) -> ApprovalRecord:
            t = approvals_t.c
            res = conn.execute(
                update(approvals_t)
                .where(t.id == approval_id, queries.pending(now))
                .values(status="approved" if approve else "rejected", decided_by=reviewer, decided_at=now, note=note)
            )
            row = conn.execute(select(approvals_t).where(t.id == approval_id)).first()
            if row is None:
                raise ApprovalConflict("unknown")
            current = ApprovalRecord.model_validate(dict(row._mapping))
            if res.rowcount != 1:
                raise ApprovalConflict("expired" if current.status == "pending" else f"already {current.status}",
                                       current)
            _append_decision(conn, ledger.review_record(
                "review/approve" if approve else "review/reject", actor=reviewer, at=now, task_id=current.task_id,
                tool=current.tool, subject={"approval": current.id, "decision_id": current.decision_id,
                                            "status": current.status, "note": note}))
            return current

        return await self.db.run(op)

    # ----- the audit log's tree (ledger.py) ---------------------------------------------
    async def seal(self, *, now: float, sign: ledger.Signer, origin: str, horizon: float = 120.0,
                   batch: int = 20_000, signed: tuple[int, str] | None = None) -> ledger.Sealed | None:
        """Seal unsealed decisions into the Merkle tree and store the signed checkpoint (one
        transaction); None when nothing was waiting or another replica is sealing."""
        return await self.db.run(lambda conn: ledger.seal(conn, now=now, horizon=horizon, origin=origin, sign=sign,
                                                          batch=batch, signed=signed))

    # ----- the read-side index: roll-up and text index (rollup.py) --------------------
    async def fold(self, *, now: float, horizon: float = 120.0, batch: int = rollup.BATCH) -> int:
        """Fold the decisions not yet in the overview's roll-up and the text index into them (one
        transaction per batch); returns how many.  Nothing when another replica is folding."""
        total = 0
        while True:  # on the worker: a batch would hold the event loop for tens of ms
            n = await self.db.run(lambda conn: rollup.fold(conn, now=now, horizon=horizon, batch=batch), inline=False)
            total += n or 0
            if n is None or n < batch:
                return total

    def verify_log(
        self, *, keys: Iterable[tuple[str, Any]] | None = None, origin: str = "", published: Iterable[str] = (),
        now: float | None = None, max_unsealed: float = float("inf"), progress: Callable[[int], None] | None = None,
    ) -> ledger.LogReport:
        """Check every row, leaf and checkpoint (blocking; CLI and tests).  Without ``keys`` the
        stored checkpoints' signatures are not checked, only their roots."""
        return ledger.verify_log(self.db.run_sync, keys=keys, origin=origin, published=published,
                                 now=time.time() if now is None else now, max_unsealed=max_unsealed,
                                 progress=progress)

    def verify_chain(self, progress: Callable[[int], None] | None = None) -> ledger.LogReport:
        """``verify_log`` with no keys and no published checkpoints (the database alone)."""
        return self.verify_log(progress=progress)

    async def leaf_hashes(self, upto: int) -> list[bytes]:
        """The first ``upto`` leaf hashes of the tree, in leaf order (proofs)."""

        def op(conn: Connection) -> list[bytes]:
            rows = conn.execute(select(ledger.leaves_t.c.hash).where(ledger.leaves_t.c.idx < upto)
                                .order_by(ledger.leaves_t.c.idx))
            return [bytes.fromhex(h) for (h,) in rows]

        return await self.db.run(op, read_only=True)

    async def leaf_of_decision(self, decision_id: str) -> tuple[int, str, DecisionRecord] | None:
        """(leaf index, leaf hash, decision) of a sealed decision; None if unknown or not sealed yet."""

        def op(conn: Connection) -> tuple[int, str, DecisionRecord] | None:
            row = conn.execute(select(decisions_t).where(decisions_t.c.id == decision_id)).first()
            if row is None:
                return None
            leaf = conn.execute(select(ledger.leaves_t.c.idx, ledger.leaves_t.c.hash)
                                .where(ledger.leaves_t.c.seq == row.seq)).first()
            return None if leaf is None else (leaf[0], leaf[1], DecisionRecord.model_validate(dict(row._mapping)))

        return await self.db.run(op, read_only=True)

    async def checkpoints(self, *, size: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Stored checkpoints, newest first (or the one of ``size``)."""

        def op(conn: Connection) -> list[dict[str, Any]]:
            t = ledger.checkpoints_t
            q = select(t.c.size, t.c.root, t.c.at, t.c.max_seq, t.c.key_id, t.c.note)
            q = q.where(t.c.size == size) if size is not None else q
            return [dict(r._mapping) for r in conn.execute(q.order_by(t.c.size.desc()).limit(limit))]

        return await self.db.run(op, read_only=True)
