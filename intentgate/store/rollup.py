"""The decision log's read-side index: counts per time bucket (for the overview) and the text
index (for the search), kept up past a watermark by a background round, never by the decision
path.

``decision_rollup`` holds, for each time bucket of each width in :data:`WIDTHS` (UTC: whole
multiples of the width since the epoch), how many decisions had each outcome, and of the
denied, held and would-deny ones how many had each agent, tool, intent and reason (a reason
once per decision, as the overview counts it).  A bucket holds the decisions whose ``at`` is
in it.  Each width divides the next coarser one, and they grow by small steps from one day
up: any range is a few whole buckets of each width (``overview.cover``), so a month's top
lists add up a few buckets of every name, not thirty days of them.  Names are numbered in
``decision_rollup_names`` (keyed by a digest, :func:`name_key`: a reason may be long, and "no
intent", null, is a name too), so a bucket's row is a few integers.

:func:`fold` is one round: it adds the decisions past the watermark (``decision_rollup_state``)
to the counts and to the text index and moves the watermark, in one transaction, holding the
state row (a replica that finds it held leaves the round to the one that holds it).  The
sealer runs rounds after its own.  Readers count what is not folded yet (:func:`unfolded`, the
tail: about one round of decisions) from the decisions table themselves, so what they answer
is exact whenever the round last ran.

On PostgreSQL a decision can commit after one with a higher ``seq`` (seqs are taken before
commit): the seqs missing below the newest one folded are kept as *holes* for ``horizon``
seconds (far longer than a transaction can live, as for the sealer), folded if they appear, and
read with the tail until then.  SQLite has one writer, rows commit in seq order: no holes.
"""

from __future__ import annotations

import hashlib
import json
import math
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, ColumnElement, Text, bindparam, cast, false, not_, or_, select, update
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from . import textsearch
from .tables import DecisionRow, RollupNameRow, RollupRow, RollupStateRow

__all__ = ["DIMS", "FLAGGED", "WIDTHS", "Folded", "bucket", "fold", "folded_state", "is_folded", "name_key",
           "tally", "unfolded"]

decisions_t = DecisionRow.__table__
rollup_t = RollupRow.__table__
names_t = RollupNameRow.__table__
state_t = RollupStateRow.__table__

_HOUR, _DAY = 3600, 86400
# bucket widths, coarsest first, each a whole multiple of the next
WIDTHS = (16 * _DAY, 8 * _DAY, 4 * _DAY, 2 * _DAY, _DAY, 12 * _HOUR, 6 * _HOUR, _HOUR, 600, 60)
FLAGGED = ("deny", "hold", "would_deny")  # what the per-name counts count
DIMS = ("reason", "agent", "tool", "intent")
BATCH = 200  # decisions per transaction of a round: SQLite's write lock is held for about 20 ms

# what a round reads of each decision (the reasons as their JSON text: PostgreSQL's json has no equality)
ROW_COLUMNS = (decisions_t.c.seq, decisions_t.c.at, decisions_t.c.outcome, decisions_t.c.agent, decisions_t.c.tool,
               decisions_t.c.intent, cast(decisions_t.c.reasons, Text))
Key = tuple[int, str, int, str, str | None]  # (width, dim, start, outcome, name)


@dataclass(frozen=True)
class Folded:
    """Which decisions the roll-up holds: every one up to ``seq`` but those in ``holes``."""

    seq: int
    holes: tuple[tuple[int, int], ...] = ()
    text_index: bool = False


def folded_state(conn: Connection) -> Folded:
    row = conn.execute(select(state_t.c.seq, state_t.c.holes, state_t.c.text_index).where(state_t.c.id == 1)).first()
    if row is None:  # (the migration writes the row: only a hand-made schema lacks it)
        return Folded(0)
    holes = json.loads(row[1]) if isinstance(row[1], str) else row[1]
    return Folded(row[0], tuple((a, b) for a, b, _ in holes), bool(row[2]))


def unfolded(state: Folded) -> list[ColumnElement[bool]]:
    """The decisions the roll-up does not hold yet, as seq ranges (past the watermark, each
    hole): one query per range, or a UNION ALL of them (SQLite scans the table for an OR)."""
    seq = decisions_t.c.seq
    return [seq > state.seq, *(seq.between(a, b) for a, b in state.holes)]


def is_folded(state: Folded) -> ColumnElement[bool]:
    return not_(or_(*unfolded(state)))


def bucket(at: float, width: int) -> int:
    """The start of the ``width``-second bucket holding ``at``."""
    if isinstance(at, int):
        return at - at % width
    start = math.floor(at / width) * width
    while start > at:  # at / width was rounded up onto the next whole number
        start -= width
    while start + width <= at:
        start += width
    return start


def name_key(name: str | None) -> str:
    """The key of a name in ``decision_rollup_names``."""
    return hashlib.sha256(json.dumps(name).encode()).hexdigest()[:32]


def tally(rows: Iterable[Any]) -> Counter[Key]:
    """Decisions (rows of :data:`ROW_COLUMNS` without the seq) counted by bucket of every width:
    by the minute, then each width from the next finer one's counts."""
    finest = WIDTHS[-1]
    level: Counter[Key] = Counter()
    parsed: dict[str, list[str]] = {}
    for at, outcome, agent, tool, intent, reasons in rows:
        start = bucket(at, finest)
        level[finest, "outcome", start, outcome, None] += 1
        if outcome in FLAGGED:
            if reasons not in parsed:
                parsed[reasons] = list(dict.fromkeys(json.loads(reasons)))  # a reason counts once per decision
            level[finest, "agent", start, outcome, agent] += 1
            level[finest, "tool", start, outcome, tool] += 1
            level[finest, "intent", start, outcome, intent] += 1
            for reason in parsed[reasons]:
                level[finest, "reason", start, outcome, reason] += 1
    counts = Counter(level)
    for width in reversed(WIDTHS[:-1]):
        coarser: Counter[Key] = Counter()
        for (_, dim, start, outcome, name), n in level.items():
            coarser[width, dim, start - start % width, outcome, name] += n
        counts.update(coarser)
        level = coarser
    return counts


def _insert(conn: Connection) -> Any:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert

        return insert
    return sqlite_insert


def name_ids(conn: Connection, names: Iterable[str | None]) -> dict[str | None, int]:
    """The ids of ``names`` in ``decision_rollup_names``, numbering the new ones."""
    keys = {name_key(name): name for name in names}
    if not keys:
        return {}
    insert = _insert(conn)
    conn.execute(insert(names_t).on_conflict_do_nothing(index_elements=["key"]),
                 [{"key": k, "name": name} for k, name in keys.items()])
    found: dict[str | None, int] = {}
    listed = list(keys)
    for i in range(0, len(listed), 500):
        for key, id_ in conn.execute(select(names_t.c.key, names_t.c.id).where(names_t.c.key.in_(listed[i:i + 500]))):
            found[keys[key]] = id_
    return found


def _upsert(insert: Any) -> Any:
    stmt = insert(rollup_t).values({c.name: bindparam(c.name) for c in rollup_t.columns})
    return stmt.on_conflict_do_update(index_elements=[c.name for c in rollup_t.primary_key],
                                      set_={"n": rollup_t.c.n + stmt.excluded.n})


# SQLite: run on the DBAPI cursor (SQLAlchemy's per-row bookkeeping would cost more than the upserts)
_UPSERT_SQLITE = str(_upsert(sqlite_insert).compile(dialect=sqlite_dialect.dialect(paramstyle="named")))


def _add(conn: Connection, counts: Counter[Key]) -> None:
    if not counts:
        return
    ids = name_ids(conn, {name for (_, dim, _, _, name) in counts if dim != "outcome"})
    rows = [{"width": width, "dim": dim, "start": start, "outcome": outcome,
             "name_id": 0 if dim == "outcome" else ids[name], "n": n}
            for (width, dim, start, outcome, name), n in counts.items()]
    if conn.dialect.name == "sqlite":
        conn.connection.driver_connection.executemany(_UPSERT_SQLITE, rows)
    else:
        conn.execute(_upsert(_insert(conn)), rows)


def _without(holes: list[list[Any]], seqs: list[int]) -> list[list[Any]]:
    """``holes`` ([first, last, seen_at]) with the sorted ``seqs`` taken out of them."""
    out = []
    for first, last, seen in holes:
        cur = first
        for s in seqs[bisect_left(seqs, first):bisect_right(seqs, last)]:
            if s > cur:
                out.append([cur, s - 1, seen])
            cur = s + 1
        if cur <= last:
            out.append([cur, last, seen])
    return out


def fold(conn: Connection, *, now: float, horizon: float, batch: int = BATCH) -> int | None:
    """One round (see the module doc): fold up to ``batch`` decisions past the watermark, and
    those that filled holes.  Returns how many were past the watermark (``batch``: more wait),
    or None when another replica holds the round.  Caller holds a write transaction."""
    state = conn.execute(select(state_t).where(state_t.c.id == 1).with_for_update(skip_locked=True)).first()
    if state is None:
        return None
    holes: list[list[Any]] = json.loads(state.holes) if isinstance(state.holes, str) else list(state.holes)
    d = decisions_t.c
    rows = conn.execute(select(*ROW_COLUMNS).where(d.seq > state.seq).order_by(d.seq).limit(batch)).all()
    filled = conn.execute(select(*ROW_COLUMNS).where(or_(false(), *(d.seq.between(a, b) for a, b, _ in holes)))
                          .order_by(d.seq)).all() if holes else []
    kept = [h for h in _without(holes, [r[0] for r in filled]) if h[2] > now - horizon]
    if not rows and not filled and kept == holes:
        return 0
    folded = [*filled, *rows]
    _add(conn, tally(r[1:] for r in folded))
    if state.text_index and folded:
        textsearch.add(conn, [r[0] for r in folded])
    top = state.seq
    if conn.dialect.name != "sqlite":  # seqs skipped below the newest row may still commit
        for r in rows:
            if r[0] > top + 1:
                kept.append([top + 1, r[0] - 1, now])
            top = r[0]
    elif rows:
        top = rows[-1][0]
    conn.execute(update(state_t).where(state_t.c.id == 1).values(seq=top, holes=kept))
    return len(rows)
