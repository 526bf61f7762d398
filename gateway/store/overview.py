"""Read-side aggregates for the reviewer overview: outcome counts over time, and who and what
was denied or held most, in one time range.

Fast on large logs without an index on ``at`` (it would cost a write per decision):

- every time edge (the range's ends and the buckets' edges) becomes a ``seq`` edge by one
  k-ary search on the primary key for all edges at once, one query per round (four or five
  rounds for 10^6 decisions, whatever the number of buckets);
- the counts per bucket and outcome come from the ``(outcome, seq)`` index alone: one query
  of scalar subqueries, each an index range count, no table row read;
- the top lists read only the denied and held rows of the range (found by the same index),
  grouped in SQL by (outcome, agent, tool, intent, reasons) and summed per dimension here.

Edges follow the log order, as the decision search's time bounds do: a decision counts in the
bucket its place in the log falls in, which is the bucket of its time wherever times follow
the log order (``queries.CLOCK_MARGIN``: a call that arrived just before an edge and committed
after it may count on either side).
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Select, Text, bindparam, cast, func, select, union_all

from .queries import decisions_t

__all__ = ["OUTCOMES", "FLAGGED", "OverviewRows", "Tally", "overview", "seq_edges"]

OUTCOMES = ("allow", "deny", "hold", "would_deny")
FLAGGED = ("deny", "hold", "would_deny")  # what the top lists count
_FANOUT = 32  # probes per open bracket and round
_FINE = 64  # a bracket this narrow is read in full


@dataclass
class Tally:
    """One name in a top list: how often it was denied, held, or would have been denied."""

    name: str | None
    deny: int = 0
    hold: int = 0
    would_deny: int = 0

    @property
    def total(self) -> int:
        return self.deny + self.hold + self.would_deny


@dataclass
class OverviewRows:
    """What :func:`overview` found: ``buckets[i]`` counts the decisions between ``edges[i]`` and
    ``edges[i + 1]`` by outcome; the top lists are the ``top`` largest, largest first."""

    edges: list[float]
    buckets: list[dict[str, int]]
    totals: dict[str, int]
    reasons: list[Tally] = field(default_factory=list)
    agents: list[Tally] = field(default_factory=list)
    tools: list[Tally] = field(default_factory=list)
    intents: list[Tally] = field(default_factory=list)
    distinct: dict[str, int] = field(default_factory=dict)  # dimension -> how many names in all


_PROBE = (select(decisions_t.c.seq, decisions_t.c.at).where(decisions_t.c.seq.in_(bindparam("seqs", expanding=True)))
          .order_by(decisions_t.c.seq))


def _columns(rows: Any) -> tuple[list[int], list[float]]:
    return [r[0] for r in rows], [r[1] for r in rows]


def _narrow(lo: int, hi: int, when: float, seqs: list[int], ats: list[float]) -> tuple[int, int]:
    """[lo, hi] narrowed by the probed (seq, at) pairs, in seq order, that fall inside it."""
    for k in range(bisect_left(seqs, lo), bisect_left(seqs, hi)):
        if ats[k] < when:
            lo = seqs[k] + 1
        else:
            return lo, seqs[k]
    return lo, hi


def seq_edges(conn: Connection, whens: list[float]) -> list[int]:
    """For each time in ``whens``, the first ``seq`` decided at or after it (one past the newest
    when every decision is older), found as ``queries._seq_at_or_after`` finds one, for all
    times at once: each round probes ``_FANOUT`` seqs inside every still-open bracket in one
    ``IN`` query, and brackets of at most ``_FINE`` seqs are read in full, all in one query.
    """
    d = decisions_t.c
    first = conn.execute(select(func.min(d.seq))).scalar_one()
    last = conn.execute(select(func.max(d.seq))).scalar_one()
    if first is None or last is None:
        return [1 for _ in whens]
    # the answer for whens[i] is in [lo[i], hi[i]]: every seq below lo[i] is older than whens[i],
    # hi[i] is a seq at or after it (or last + 1)
    lo = [first] * len(whens)
    hi = [last + 1] * len(whens)
    fine: set[int] = set()
    while True:
        wide = [i for i in range(len(whens)) if i not in fine and hi[i] - lo[i] > _FINE]
        if not wide:
            break
        probes: set[int] = set()
        for i in wide:
            gap = (hi[i] - lo[i]) / (_FANOUT + 1)
            probes.update(lo[i] + int(gap * j) for j in range(1, _FANOUT + 1))
        seqs, ats = _columns(conn.execute(_PROBE, {"seqs": sorted(probes)}).all())
        for i in wide:
            narrowed = _narrow(lo[i], hi[i], whens[i], seqs, ats)
            if narrowed == (lo[i], hi[i]):  # every probe fell in a gap of the log: read the bracket
                fine.add(i)
            lo[i], hi[i] = narrowed
    spans = sorted({(lo[i], hi[i]) for i in range(len(whens)) if lo[i] < hi[i]})
    if not spans:
        return hi
    # a UNION ALL of primary key ranges: SQLite scans the whole table for an OR of them
    ranges = union_all(*(select(d.seq, d.at).where(d.seq >= a, d.seq < b) for a, b in spans))
    seqs, ats = _columns(conn.execute(ranges.order_by("seq")).all())
    return [_narrow(lo[i], hi[i], whens[i], seqs, ats)[1] for i in range(len(whens))]


@lru_cache(maxsize=64)
def _counts_statement(cells: int) -> Select[Any]:
    """``cells`` index range counts in one statement (built once per size: SQLAlchemy's
    statement cache then skips compiling it again)."""
    d = decisions_t.c
    return select(*(
        select(func.count()).select_from(decisions_t)
        .where(d.outcome == bindparam(f"o{n}"), d.seq >= bindparam(f"lo{n}"), d.seq < bindparam(f"hi{n}"))
        .scalar_subquery().label(f"c{n}")
        for n in range(cells)
    ))


def _counts(conn: Connection, seqs: list[int]) -> list[dict[str, int]]:
    """Decisions by outcome between consecutive seq edges: index range counts, one query."""
    buckets: list[dict[str, int]] = [dict.fromkeys(OUTCOMES, 0) for _ in range(len(seqs) - 1)]
    cells = [(i, o) for i in range(len(seqs) - 1) if seqs[i] < seqs[i + 1] for o in OUTCOMES]
    if not cells:
        return buckets
    params: dict[str, Any] = {}
    for n, (i, o) in enumerate(cells):
        params.update({f"o{n}": o, f"lo{n}": seqs[i], f"hi{n}": seqs[i + 1]})
    counted = conn.execute(_counts_statement(len(cells)), params).one()
    for (i, o), n in zip(cells, counted, strict=True):
        buckets[i][o] = int(n)
    return buckets


def _top(counts: Counter[tuple[str | None, str]], top: int) -> tuple[list[Tally], int]:
    """The ``top`` names by their total count, largest first, and how many names in all."""
    tallies: dict[str | None, Tally] = {}
    for (name, outcome), n in counts.items():
        tally = tallies.setdefault(name, Tally(name))
        setattr(tally, outcome, getattr(tally, outcome) + n)
    return sorted(tallies.values(), key=lambda t: (-t.total, t.name or ""))[:top], len(tallies)


def overview(conn: Connection, edges: list[float], *, top: int = 10) -> OverviewRows:
    """Counts by outcome in each bucket between consecutive ``edges`` (ascending epoch
    seconds; the range is ``edges[0]`` to ``edges[-1]``), and the ``top`` reasons, agents,
    tools and intents of the denied, held and would-deny decisions of the whole range."""
    seqs = seq_edges(conn, edges)
    buckets = _counts(conn, seqs)
    totals = {o: sum(b[o] for b in buckets) for o in OUTCOMES}
    rows = OverviewRows(edges=edges, buckets=buckets, totals=totals)
    if not any(totals[o] for o in FLAGGED):
        return rows
    d = decisions_t.c
    reasons_text = cast(d.reasons, Text)  # PostgreSQL's json has no equality: group by its text
    groups = conn.execute(
        select(d.outcome, d.agent, d.tool, d.intent, reasons_text, func.count())
        .where(d.outcome.in_(FLAGGED), d.seq >= seqs[0], d.seq < seqs[-1])
        .group_by(d.outcome, d.agent, d.tool, d.intent, reasons_text)
    ).all()
    by: dict[str, Counter[tuple[str | None, str]]] = {k: Counter() for k in ("reasons", "agents", "tools", "intents")}
    parsed: dict[str, list[str]] = {}
    for outcome, agent, tool, intent, reasons, n in groups:
        if reasons not in parsed:
            parsed[reasons] = list(dict.fromkeys(json.loads(reasons)))  # a reason counts once per decision
        for reason in parsed[reasons]:
            by["reasons"][reason, outcome] += n
        by["agents"][agent, outcome] += n
        by["tools"][tool, outcome] += n
        by["intents"][intent, outcome] += n
    (rows.reasons, n_reasons), (rows.agents, n_agents), (rows.tools, n_tools), (rows.intents, n_intents) = (
        _top(by[k], top) for k in ("reasons", "agents", "tools", "intents"))
    rows.distinct = {"reasons": n_reasons, "agents": n_agents, "tools": n_tools, "intents": n_intents}
    return rows

