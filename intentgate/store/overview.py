"""Read-side aggregates for the reviewer overview: outcome counts over time, and who and what
was denied or held most, in one time range.

Fast on large logs without an index on ``at`` (it would cost a write per decision): the counts
come from the roll-up (``rollup``: per minute, hour and day, kept up by a background round),
and only what it cannot answer is read from the decisions table:

- the range is covered by whole buckets of the roll-up's widths, coarsest first (:func:`cover`):
  a few of each width, whatever the range's length; for the counts per bucket only by the
  widths that fit the buckets' edges, so that no rolled-up bucket straddles one;
- the parts of the range's two ends shorter than a minute are read from the decisions made
  then (their ``seq`` range found by one k-ary search on the primary key, :func:`seq_edges`,
  widened by ``queries.CLOCK_MARGIN`` as the decision search's time bounds are);
- the decisions the round has not folded yet (the tail) are read in full.

A decision counts in the bucket its time falls in, exactly (the roll-up is keyed by time, the
rest is filtered on it), and every decision the log holds, reviewer actions included, counts
by its outcome, as the decision search finds them.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_left, bisect_right
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Text, bindparam, cast, func, select, union_all

from .queries import CLOCK_MARGIN, decisions_t
from .rollup import DIMS, FLAGGED, WIDTHS, Folded, folded_state, is_folded, names_t, rollup_t, unfolded

__all__ = ["OUTCOMES", "FLAGGED", "OverviewRows", "Tally", "cover", "overview", "seq_edges"]

OUTCOMES = ("allow", "deny", "hold", "would_deny")
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


def _top(counts: Counter[tuple[str | None, str]], top: int) -> tuple[list[Tally], int]:
    """The ``top`` names by their total count, largest first, and how many names in all."""
    tallies: dict[str | None, Tally] = {}
    for (name, outcome), n in counts.items():
        tally = tallies.setdefault(name, Tally(name))
        setattr(tally, outcome, getattr(tally, outcome) + n)
    return sorted(tallies.values(), key=lambda t: (-t.total, t.name or ""))[:top], len(tallies)


def _ceil(t: float, width: int) -> int:
    k = math.ceil(t / width)
    while k * width < t:
        k += 1
    while (k - 1) * width >= t:
        k -= 1
    return k * width


def _floor(t: float, width: int) -> int:
    k = math.floor(t / width)
    while k * width > t:
        k -= 1
    while (k + 1) * width <= t:
        k += 1
    return k * width


def cover(a: float, b: float, widths: tuple[int, ...]) -> tuple[list[tuple[int, int, int]], list[tuple[float, float]]]:
    """[a, b) as whole buckets of ``widths`` (coarsest first): ``(width, first start, end)``
    runs, and the pieces left over at the ends (shorter than the finest width)."""
    if not widths:
        return [], [(a, b)] if a < b else []
    width, finer = widths[0], widths[1:]
    lo, hi = _ceil(a, width), _floor(b, width)
    if lo >= hi:
        return cover(a, b, finer)
    left, left_raw = cover(a, lo, finer)
    right, right_raw = cover(hi, b, finer)
    return [(width, lo, hi), *left, *right], [*left_raw, *right_raw]


_ROW = (decisions_t.c.at, decisions_t.c.outcome, decisions_t.c.agent, decisions_t.c.tool, decisions_t.c.intent,
        cast(decisions_t.c.reasons, Text))


def _raw(conn: Connection, state: Folded, pieces: list[tuple[float, float]], since: float, until: float) -> list[Any]:
    """The decisions not in the roll-up's answer: those of the end ``pieces`` it holds, and the
    tail it does not hold yet (in the range), in one UNION ALL of primary key ranges."""
    d = decisions_t.c
    parts = []
    if pieces:
        seqs = seq_edges(conn, [t for a, b in pieces for t in (a - CLOCK_MARGIN, b + CLOCK_MARGIN)])
        for k, (a, b) in enumerate(pieces):
            parts.append(select(*_ROW).where(d.seq >= seqs[2 * k], d.seq < seqs[2 * k + 1], d.at >= a, d.at < b,
                                             is_folded(state)))
    parts += [select(*_ROW).where(part, d.at >= since, d.at < until) for part in unfolded(state)]
    return list(conn.execute(union_all(*parts)).all())


def overview(conn: Connection, edges: list[float], *, top: int = 10) -> OverviewRows:
    """Counts by outcome in each bucket between consecutive ``edges`` (ascending epoch
    seconds; the range is ``edges[0]`` to ``edges[-1]``), and the ``top`` reasons, agents,
    tools and intents of the denied, held and would-deny decisions of the whole range."""
    state = folded_state(conn)
    since, until = edges[0], edges[-1]
    buckets: list[dict[str, int]] = [dict.fromkeys(OUTCOMES, 0) for _ in range(len(edges) - 1)]
    # the coarsest width every inner edge is a whole multiple of: its buckets never straddle an edge
    fits = next((w for w in WIDTHS if all(e % w == 0 for e in edges[1:-1])), None)
    widths = WIDTHS if fits is not None else ()
    runs, pieces = cover(since, until, tuple(w for w in widths if w <= (fits or 0)))
    r = rollup_t.c
    if runs:
        counted = conn.execute(union_all(*(
            select(r.start, r.outcome, r.n).where(r.width == w, r.dim == "outcome", r.start >= lo, r.start < hi)
            for w, lo, hi in runs)))
        for start, outcome, n in counted:
            if outcome in OUTCOMES:
                buckets[bisect_right(edges, start) - 1][outcome] += n
    by: dict[str, Counter[tuple[str | None, str]]] = {k: Counter() for k in DIMS}
    parsed: dict[str, list[str]] = {}
    for at, outcome, agent, tool, intent, reasons in _raw(conn, state, pieces, since, until):
        if outcome in OUTCOMES:
            buckets[bisect_right(edges, at) - 1][outcome] += 1
        if outcome in FLAGGED:
            if reasons not in parsed:
                parsed[reasons] = list(dict.fromkeys(json.loads(reasons)))  # a reason counts once per decision
            for reason in parsed[reasons]:
                by["reason"][reason, outcome] += 1
            by["agent"][agent, outcome] += 1
            by["tool"][tool, outcome] += 1
            by["intent"][intent, outcome] += 1
    totals = {o: sum(b[o] for b in buckets) for o in OUTCOMES}
    rows = OverviewRows(edges=edges, buckets=buckets, totals=totals)
    if not any(totals[o] for o in FLAGGED):
        return rows
    runs, _ = cover(since, until, widths)  # (both covers leave the same pieces: the range's parts of a minute)
    if runs:
        named = union_all(*(
            select(r.dim, r.outcome, r.name_id, r.n).where(r.width == w, r.dim.in_(DIMS), r.start >= lo, r.start < hi)
            for w, lo, hi in runs)).subquery()
        summed = (select(named.c.dim, named.c.outcome, named.c.name_id, func.sum(named.c.n).label("n"))
                  .group_by(named.c.dim, named.c.outcome, named.c.name_id).subquery())
        for dim, outcome, name, n in conn.execute(
                select(summed.c.dim, summed.c.outcome, names_t.c.name, summed.c.n)
                .join_from(summed, names_t, names_t.c.id == summed.c.name_id)):
            if outcome in FLAGGED:
                by[dim][name, outcome] += int(n)
    (rows.reasons, n_reasons), (rows.agents, n_agents), (rows.tools, n_tools), (rows.intents, n_intents) = (
        _top(by[k], top) for k in DIMS)
    rows.distinct = {"reasons": n_reasons, "agents": n_agents, "tools": n_tools, "intents": n_intents}
    return rows
