"""Read-side queries for reviewers: decision search, one decision with its context, export.

Nothing here writes.  Paging is keyset paging on ``seq`` (``seq < before``, newest first),
never OFFSET, so page N costs what page 1 costs.  Outcome and agent filters use the
``(outcome, seq)`` and ``(agent, seq)`` indexes, a decision page the unique ``id`` and the
primary keys.  Time bounds become a ``seq`` range by a binary search on the primary key (no
index on ``at``: it would cost a write per decision); the other filters (intent, tool,
reason, text) narrow a newest-first walk that stops as soon as a page is full.  A text
term of three characters or more is looked up in the text index first (``textsearch``):
its candidates, newest first, are checked against every filter, so a term that matches
nothing reads nothing; only a term found very often is walked for as before, where its
matches are dense.  The decisions the index does not hold yet (``rollup.unfolded``) are
walked as before too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Connection, Text, and_, bindparam, cast, func, or_, select

from ..workflow import Task
from . import textsearch
from .records import ApprovalRecord, DecisionRecord, TokenRecord
from .compiled import json_value
from .rollup import folded_state, unfolded
from .taskrows import task_with_history
from .tables import ApprovalRow, DecisionRow, GrantRow, OutcomeRow, TaskResultRow, TaskRow, TokenRow

__all__ = [
    "DecisionDetailRows",
    "DecisionFilter",
    "OutcomeRecord",
    "ReviewBacklog",
    "count_from",
    "decision_detail",
    "decisions_from",
    "has_reason",
    "last_seq",
    "pending",
    "pending_approvals",
    "review_backlog",
    "search_decisions",
]

decisions_t = DecisionRow.__table__
tasks_t = TaskRow.__table__
tokens_t = TokenRow.__table__
approvals_t = ApprovalRow.__table__
outcomes_t = OutcomeRow.__table__

# a list row leaves out the large columns (arguments, policy input and result)
_LIST_COLUMNS = [
    c for c in decisions_t.columns if c.name not in ("arguments", "policy_input", "policy_result", "prev_hash", "hash")
]


@dataclass(frozen=True)
class DecisionFilter:
    """What a reviewer asks for; every given field narrows the result (AND)."""

    outcome: str | None = None
    agent: str | None = None
    intent: str | None = None
    tool: str | None = None
    kind: str | None = None
    reason: str | None = None  # a reason code (matches `code` and `code:detail`) or one full reason
    q: str | None = None  # case-insensitive substring of id, agent, tool, intent, task id, reasons or arguments
    since: float | None = None  # at >= since
    until: float | None = None  # at < until
    before_seq: int | None = None
    limit: int = 50
    full: bool = False  # whole records (arguments, policy input and result, hashes), not list rows


class OutcomeRecord(BaseModel):
    """What happened after an allow (``call_outcomes``)."""

    model_config = ConfigDict(extra="forbid")

    decision_id: str
    at: float
    status: str
    latency_ms: float
    detail: str | None = None


@dataclass
class DecisionDetailRows:
    """One decision and everything it refers to, read in one transaction."""

    decision: DecisionRecord
    outcome: OutcomeRecord | None = None
    token: TokenRecord | None = None
    task: Task | None = None
    approvals: list[ApprovalRecord] = field(default_factory=list)
    seq_of: dict[str, int] = field(default_factory=dict)  # decision id -> seq, for the task's history
    kept: dict[str, list[Any]] = field(default_factory=dict)  # path -> values its result held for bindings


def has_reason(reasons: list[str], wanted: str) -> bool:
    """``wanted`` is a code (matches ``code`` and ``code:detail``) or one full ``code:detail``."""
    if ":" in wanted:
        return wanted in reasons
    return any(r == wanted or r.startswith(wanted + ":") for r in reasons)


def _reason_condition(wanted: str) -> Any:
    # a cheap pre-filter on the JSON text; has_reason() decides (a detail may quote anything)
    text = cast(decisions_t.c.reasons, Text)
    if ":" in wanted:
        return text.contains(json.dumps(wanted), autoescape=True)
    return or_(text.contains(f'"{wanted}"', autoescape=True), text.contains(f'"{wanted}:', autoescape=True))


# Decision times follow the log order to within this many seconds (``at`` is taken when a call
# arrives, ``seq`` when its decision commits; store and policy timeouts bound the gap).
CLOCK_MARGIN = 300.0


def _seq_at_or_after(conn: Connection, when: float) -> int | None:
    """About the first ``seq`` decided at or after ``when``: a binary search on the primary key.

    Turns a time bound into a ``seq`` range, so a time filter narrows the walk instead of
    scanning from the newest decision (there is no index on ``at``: it would cost a write per
    decision).  ``None`` when every decision is older.
    """
    d = decisions_t.c
    # two queries: SQLite answers min() or max() alone from the primary key, both at once by a scan
    lo = conn.execute(select(func.min(d.seq))).scalar_one()
    hi = conn.execute(select(func.max(d.seq))).scalar_one()
    if lo is None or hi is None:
        return None
    at_of = select(d.at).where(d.seq >= bindparam("s")).order_by(d.seq).limit(1)
    if conn.execute(at_of, {"s": hi}).scalar_one() < when:
        return None
    while lo < hi:  # first seq whose at >= when (seq gaps are fine: `seq >= s` takes the next row)
        mid = (lo + hi) // 2
        if conn.execute(at_of, {"s": mid}).scalar_one() < when:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _conditions(conn: Connection, f: DecisionFilter) -> tuple[list[Any], tuple[int, int | None]]:
    """The filter's conditions, and the seq range they can match in (from ``since`` and ``until``)."""
    d = decisions_t.c
    conds: list[Any] = []
    floor, ceiling = 0, None
    for column, value in ((d.outcome, f.outcome), (d.agent, f.agent), (d.intent, f.intent), (d.tool, f.tool),
                          (d.kind, f.kind)):
        if value is not None:
            conds.append(column == value)
    if f.since is not None:
        conds.append(d.at >= f.since)
        low = _seq_at_or_after(conn, f.since - CLOCK_MARGIN)
        if low is not None:
            conds.append(d.seq >= low)
            floor = low
    if f.until is not None:
        conds.append(d.at < f.until)
        high = _seq_at_or_after(conn, f.until + CLOCK_MARGIN)
        if high is not None:
            conds.append(d.seq < high)
            ceiling = high
    if f.reason:
        conds.append(_reason_condition(f.reason))
    if f.q:
        columns = (d.id, d.agent, d.tool, d.intent, d.task_id, cast(d.reasons, Text), cast(d.arguments, Text))
        conds.append(or_(*(c.icontains(f.q, autoescape=True) for c in columns)))
    return conds, (floor, ceiling)


def _matching(f: DecisionFilter, rows: Any) -> list[DecisionRecord]:
    records = [DecisionRecord.model_validate(dict(row._mapping)) for row in rows]
    return [r for r in records if not f.reason or has_reason(r.reasons, f.reason)]


def _walk(conn: Connection, f: DecisionFilter, conds: list[Any], before: int | None) -> list[DecisionRecord]:
    """Up to ``f.limit + 1`` decisions meeting ``conds`` below ``before``, newest first."""
    want = f.limit + 1
    found: list[DecisionRecord] = []
    while True:
        q = select(*(decisions_t.columns if f.full else _LIST_COLUMNS)).where(*conds)
        if before is not None:
            q = q.where(decisions_t.c.seq < before)
        rows = conn.execute(q.order_by(decisions_t.c.seq.desc()).limit(want)).all()
        found += _matching(f, rows)
        if len(found) >= want or len(rows) < want:
            return found[:want]
        before = rows[-1].seq


_CHUNK = 256  # first batch of text index candidates (then doubling)
_DENSE = 8192  # after this many candidates for one page, a term is frequent: walk for it instead


def _indexed(conn: Connection, f: DecisionFilter, conds: list[Any], below: int, floor: int) -> list[DecisionRecord]:
    """:func:`_walk` over the decisions the text index holds (``seq < below``), driven by it."""
    want = f.limit + 1
    found: list[DecisionRecord] = []
    chunk, seen = _CHUNK, 0
    while seen < _DENSE:
        seqs = textsearch.candidates(conn, f.q or "", below=below, floor=floor, limit=chunk)
        if seqs:
            q = select(*(decisions_t.columns if f.full else _LIST_COLUMNS)).where(*conds, decisions_t.c.seq.in_(seqs))
            if not f.reason:  # (a reason is checked here, after the query: then every row is read)
                q = q.limit(want - len(found))
            found += _matching(f, conn.execute(q.order_by(decisions_t.c.seq.desc())).all())
        if len(found) >= want or len(seqs) < chunk:
            return found[:want]
        below, seen = seqs[-1], seen + chunk
        chunk = min(chunk * 2, _DENSE - seen)
    # matches are dense below here (or the other filters rare among them): walk as without an index
    return (found + _walk(conn, f, conds, below))[:want]


def search_decisions(conn: Connection, f: DecisionFilter) -> list[DecisionRecord]:
    """Up to ``f.limit + 1`` matching decisions, newest first (the extra one says "more")."""
    conds, (floor, ceiling) = _conditions(conn, f)
    state = folded_state(conn) if f.q and textsearch.indexable(f.q) else None
    if state is None or not state.text_index:
        return _walk(conn, f, conds, f.before_seq)
    # what the index does not hold yet, walked range by range, then what it holds
    found = [r for part in unfolded(state) for r in _walk(conn, f, [*conds, part], f.before_seq)]
    below = min(b for b in (f.before_seq, ceiling, state.seq + 1) if b is not None)
    found += _indexed(conn, f, conds, below, floor)
    unique = {r.seq: r for r in found}
    return [unique[s] for s in sorted(unique, reverse=True)[: f.limit + 1]]


def decision_detail(conn: Connection, decision_id: str) -> DecisionDetailRows | None:
    row = conn.execute(select(decisions_t).where(decisions_t.c.id == decision_id)).first()
    if row is None:
        return None
    rows = DecisionDetailRows(DecisionRecord.model_validate(dict(row._mapping)))
    d = rows.decision
    found = conn.execute(select(outcomes_t).where(outcomes_t.c.decision_id == d.id)).first()
    rows.outcome = OutcomeRecord.model_validate(dict(found._mapping)) if found else None
    if rows.outcome is not None:
        results = TaskResultRow.__table__.c
        rows.kept = {path: json_value(v) for path, v in conn.execute(
            select(results.path, results.found).where(results.decision_id == d.id)).all()}
    if d.token_jti:
        found = conn.execute(select(tokens_t).where(tokens_t.c.jti == d.token_jti)).first()
        rows.token = TokenRecord.model_validate(dict(found._mapping)) if found else None
    if d.task_id:
        found = conn.execute(select(tasks_t).where(tasks_t.c.id == d.task_id)).first()
        rows.task = task_with_history(conn, found) if found else None
    rows.approvals = [
        ApprovalRecord.model_validate(dict(r._mapping))
        for r in conn.execute(
            select(approvals_t).where(approvals_t.c.decision_id == d.id).order_by(approvals_t.c.created_at)
        )
    ]
    ids = {h.decision_id for h in rows.task.history} if rows.task else set()
    ids.add(d.id)
    rows.seq_of = dict(
        conn.execute(select(decisions_t.c.id, decisions_t.c.seq).where(decisions_t.c.id.in_(sorted(ids)))).all()
    )
    return rows


def decisions_from(
    conn: Connection, *, after_seq: int, upto_seq: int, since: float | None, limit: int
) -> list[DecisionRecord]:
    """Full decisions with ``after_seq < seq <= upto_seq`` (and ``at >= since``), in seq order."""
    conds = [decisions_t.c.seq > after_seq, decisions_t.c.seq <= upto_seq]
    if since is not None:
        conds.append(decisions_t.c.at >= since)
    q = select(decisions_t).where(and_(*conds)).order_by(decisions_t.c.seq).limit(limit)
    return [DecisionRecord.model_validate(dict(r._mapping)) for r in conn.execute(q)]


def last_seq(conn: Connection) -> int:
    """The newest decision's seq (0 for an empty log)."""
    return conn.execute(select(func.coalesce(func.max(decisions_t.c.seq), 0))).scalar_one()


def count_from(conn: Connection, *, after_seq: int, upto_seq: int, since: float | None) -> int:
    """How many decisions :func:`decisions_from` would yield in all (for progress bars)."""
    conds = [decisions_t.c.seq > after_seq, decisions_t.c.seq <= upto_seq]
    if since is not None:
        conds.append(decisions_t.c.at >= since)
    return conn.execute(select(func.count()).select_from(decisions_t).where(and_(*conds))).scalar_one()


def pending(now: float) -> Any:
    """What "pending approvals" means everywhere (the overview, the ``intentgate_approvals_pending``
    gauge, deciding one): held calls a reviewer can still approve, pending and not expired."""
    a = approvals_t.c
    return and_(a.status == "pending", a.expires_at > now)


def pending_approvals(conn: Connection, now: float, *, limit: int = 200) -> list[ApprovalRecord]:
    """The oldest ``limit`` :func:`pending` approvals, oldest first (a queue)."""
    q = select(approvals_t).where(pending(now)).order_by(approvals_t.c.created_at).limit(limit)
    return [ApprovalRecord.model_validate(dict(r._mapping)) for r in conn.execute(q)]


@dataclass(frozen=True)
class ReviewBacklog:
    """What awaits reviewers now (the state gauges of ``/metrics``)."""

    pending_approvals: int  # pending(now): what a reviewer can still approve
    active_grants: int  # neither expired nor revoked
    unsigned_grants: int  # not signed off yet (the "needs review" list), whatever their state


def review_backlog(conn: Connection, now: float) -> ReviewBacklog:
    """:class:`ReviewBacklog` at ``now``, in one statement."""
    grants_t = GrantRow.__table__
    g = grants_t.c

    def count(table: Any, *where: Any) -> Any:
        return select(func.count()).select_from(table).where(*where).scalar_subquery()

    row = conn.execute(select(
        count(approvals_t, pending(now)),
        count(grants_t, g.expires_at > now, g.revoked_at.is_(None)),
        count(grants_t, g.signed_off_at.is_(None)),
    )).one()
    return ReviewBacklog(*row)
