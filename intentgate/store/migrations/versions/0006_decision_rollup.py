"""The decision log's read-side index: counts per time bucket, a text index, and how far they reach.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

``decision_rollup`` (decisions per time bucket, of widths from a minute to 16 days, by outcome,
and of the denied, held and would-deny ones by agent, tool, intent and reason, the names
numbered in ``decision_rollup_names``) and the text index (SQLite: an FTS5
table with the trigram tokenizer over the decisions' searchable columns; PostgreSQL: a table
of that text with a pg_trgm GIN index, if the extension can be created) are built here from
the decisions the log holds, and ``decision_rollup_state`` says up to which seq.  From then on
the roll-up round (``intentgate.store.rollup``) keeps them up.  The counting is written out here,
not imported: a migration must mean the same thing whatever the gateway's code becomes.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

WIDTHS = (16 * 86400, 8 * 86400, 4 * 86400, 2 * 86400, 86400, 12 * 3600, 6 * 3600, 3600, 600, 60)
FLAGGED = ("deny", "hold", "would_deny")
BATCH = 20_000
RECENT = 10_000  # PostgreSQL: seqs missing among the newest this many may still commit (a gateway not yet upgraded)

_SQLITE_TEXT = ("CREATE VIRTUAL TABLE decision_text USING fts5(id, agent, tool, intent, task_id, reasons, arguments, "
                "content='decisions', content_rowid='seq', tokenize='trigram', detail=full)")


def _minute(at: float) -> int:
    start = math.floor(at / 60) * 60
    while start > at:
        start -= 60
    while start + 60 <= at:
        start += 60
    return start


def _key(name: str | None) -> str:
    return hashlib.sha256(json.dumps(name).encode()).hexdigest()[:32]


def _tally(rows: list[Any]) -> Counter[tuple[int, str, int, str, str | None]]:
    """Counts by minute, then by each coarser width from the next finer one's."""
    level: Counter[tuple[int, str, int, str, str | None]] = Counter()
    for _seq, at, outcome, agent, tool, intent, reasons in rows:
        start = _minute(at)
        level[60, "outcome", start, outcome, None] += 1
        if outcome in FLAGGED:
            for dim, name in (("agent", agent), ("tool", tool), ("intent", intent)):
                level[60, dim, start, outcome, name] += 1
            for reason in dict.fromkeys(json.loads(reasons)):  # once per decision
                level[60, "reason", start, outcome, reason] += 1
    counts = Counter(level)
    for width in reversed(WIDTHS[:-1]):
        coarser: Counter[tuple[int, str, int, str, str | None]] = Counter()
        for (_, dim, start, outcome, name), n in level.items():
            coarser[width, dim, start - start % width, outcome, name] += n
        counts.update(coarser)
        level = coarser
    return counts


def _text_index(conn: sa.Connection) -> bool:
    """Make the text index's table (empty); False where the database cannot have one."""
    if conn.dialect.name == "sqlite":
        try:
            with conn.begin_nested():
                conn.execute(sa.text(_SQLITE_TEXT))
        except sa.exc.DBAPIError:  # no FTS5 in this SQLite
            return False
        return True
    try:
        with conn.begin_nested():
            conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
    except sa.exc.DBAPIError:  # not installed (postgresql-contrib), or not ours to create
        pass
    schema = conn.execute(sa.text("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n "
                                  "ON n.oid = e.extnamespace WHERE e.extname = 'pg_trgm'")).scalar()
    if schema is None:
        return False
    conn.execute(sa.text("CREATE TABLE decision_text (seq INTEGER PRIMARY KEY, body TEXT NOT NULL)"))
    return True


def upgrade() -> None:
    rollup = op.create_table(
        "decision_rollup",
        sa.Column("width", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("dim", sa.String(8), primary_key=True),
        sa.Column("start", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("outcome", sa.String(16), primary_key=True),
        sa.Column("name_id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sqlite_with_rowid=False,
    )
    names = op.create_table(
        "decision_rollup_names",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("key", sa.String(32), nullable=False, unique=True),
        sa.Column("name", sa.Text(), nullable=True),
    )
    state = op.create_table(
        "decision_rollup_state",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("holes", sa.JSON(), nullable=False),
        sa.Column("text_index", sa.Boolean(), nullable=False),
    )
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    add = insert(rollup)
    add = add.on_conflict_do_update(index_elements=["width", "dim", "start", "outcome", "name_id"],
                                    set_={"n": rollup.c.n + add.excluded.n})
    decisions = sa.table("decisions", *(sa.column(c) for c in ("seq", "at", "outcome", "agent", "tool", "intent")),
                         sa.column("reasons", sa.JSON))
    d = decisions.c
    ids: dict[str | None, int] = {}
    after, top = 0, 0
    while True:
        rows = conn.execute(sa.select(d.seq, d.at, d.outcome, d.agent, d.tool, d.intent, sa.cast(d.reasons, sa.Text))
                            .where(d.seq > after).order_by(d.seq).limit(BATCH)).all()
        if not rows:
            break
        counts = _tally(rows)
        new = {name for (_, dim, _, _, name) in counts if dim != "outcome" and name not in ids}
        for name in new:  # one writer here: the names are numbered in order
            ids[name] = conn.execute(sa.insert(names).values(key=_key(name), name=name).returning(names.c.id)).scalar_one()
        conn.execute(add, [
            {"width": width, "dim": dim, "start": start, "outcome": outcome, "n": n,
             "name_id": 0 if dim == "outcome" else ids[name]}
            for (width, dim, start, outcome, name), n in counts.items()])
        after = top = rows[-1][0]
    text_index = _text_index(conn)
    if text_index and conn.dialect.name == "sqlite":
        conn.execute(sa.text("INSERT INTO decision_text (decision_text) VALUES ('rebuild')"))
    elif text_index:
        conn.execute(sa.text("INSERT INTO decision_text (seq, body) SELECT seq, concat_ws(chr(10), id, agent, tool, "
                             "intent, task_id, reasons::text, arguments::text) FROM decisions"))
        schema = conn.execute(sa.text("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n "
                                      "ON n.oid = e.extnamespace WHERE e.extname = 'pg_trgm'")).scalar()
        ops = conn.dialect.identifier_preparer.quote_schema(schema) + ".gin_trgm_ops"
        conn.execute(sa.text(f"CREATE INDEX ix_decision_text_trgm ON decision_text USING gin (body {ops})"))
    holes: list[list[Any]] = []
    if conn.dialect.name == "postgresql":
        prev, now = None, time.time()
        for (seq,) in conn.execute(sa.select(d.seq).where(d.seq > top - RECENT).order_by(d.seq)):
            if prev is not None and seq > prev + 1:
                holes.append([prev + 1, seq - 1, now])
            prev = seq
    conn.execute(sa.insert(state).values(id=1, seq=top, holes=holes, text_index=text_index))


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS decision_text")
    op.drop_table("decision_rollup_state")
    op.drop_table("decision_rollup_names")
    op.drop_table("decision_rollup")
