"""The text index behind the decision search's ``q``: which decisions may hold a term, found
without reading the decisions table.

- SQLite: ``decision_text``, an FTS5 table with the trigram tokenizer over the searchable
  columns of each decision (id, agent, tool, intent, task id, reasons, arguments), with
  external content: the text stays in ``decisions``, the index holds its trigrams (about a
  quarter of the table's size).  A phrase query finds the rows where one column holds the
  term, case folded.
- PostgreSQL: ``decision_text`` (seq, those columns joined) with a ``pg_trgm`` GIN index,
  queried with ``ILIKE``.  Where the extension cannot be created the migration makes no
  index, and the search reads the decisions as it did before.

The index only narrows: each candidate is checked against the search's own conditions, so a
search finds exactly what it finds without the index.  A term shorter than three characters
has no trigram and is searched without it.  The roll-up round (``rollup.fold``) fills the index
from what the decisions table holds: arguments that are not recorded (``audit.arguments:
false``) are not indexed either.
"""

from __future__ import annotations

from sqlalchemy import Connection, bindparam, text

__all__ = ["MIN_TERM", "UNMODELLED", "add", "candidates", "indexable"]

MIN_TERM = 3
# what the migrations make beside the models (dialect-specific: an FTS5 table and its shadow
# tables, or a table whose index needs pg_trgm), left out of the model comparison
UNMODELLED = frozenset({"decision_text", "decision_text_config", "decision_text_content", "decision_text_data",
                        "decision_text_docsize", "decision_text_idx"})

_ADD = {
    "sqlite": text("INSERT INTO decision_text (rowid, id, agent, tool, intent, task_id, reasons, arguments) "
                   "SELECT seq, id, agent, tool, intent, task_id, reasons, arguments FROM decisions "
                   "WHERE seq IN :seqs").bindparams(bindparam("seqs", expanding=True)),
    "postgresql": text("INSERT INTO decision_text (seq, body) SELECT seq, concat_ws(chr(10), id, agent, tool, "
                       "intent, task_id, reasons::text, arguments::text) FROM decisions "
                       "WHERE seq IN :seqs").bindparams(bindparam("seqs", expanding=True)),
}
_CANDIDATES = {
    "sqlite": text("SELECT rowid FROM decision_text WHERE decision_text MATCH :term AND rowid < :below "
                   "AND rowid >= :floor ORDER BY rowid DESC LIMIT :limit"),
    "postgresql": text("SELECT seq FROM decision_text WHERE body ILIKE :term ESCAPE '/' AND seq < :below "
                       "AND seq >= :floor ORDER BY seq DESC LIMIT :limit"),
}


def indexable(term: str) -> bool:
    return len(term) >= MIN_TERM and "\x00" not in term


def add(conn: Connection, seqs: list[int]) -> None:
    """Index the decisions ``seqs`` (each once: the roll-up folds a decision once)."""
    conn.execute(_ADD[conn.dialect.name], {"seqs": seqs})


def candidates(conn: Connection, term: str, *, below: int, floor: int, limit: int) -> list[int]:
    """Up to ``limit`` seqs in [floor, below) whose indexed text may hold ``term``, newest first."""
    if conn.dialect.name == "sqlite":
        query = '"' + term.replace('"', '""') + '"'  # one FTS5 phrase: the term, verbatim
    else:
        query = "%" + term.replace("/", "//").replace("%", "/%").replace("_", "/_") + "%"
        # a plan made for no term in particular (psycopg prepares a statement run five times)
        # cannot know that this one is rare, and walks the table for it
        conn.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
    found = conn.execute(_CANDIDATES[conn.dialect.name],
                         {"term": query, "below": below, "floor": floor, "limit": limit})
    return [s for (s,) in found]
