"""Hot-path statements compiled once for SQLite and run on the DBAPI cursor.

SQLAlchemy's per-execution bookkeeping costs ~50 µs a statement here, several times SQLite's
own work, so the statements of the decision path skip it on SQLite: the same Core statement,
the same SQL, the same JSON encoding (``json.dumps``, as SQLAlchemy's JSON type does), no
per-call compilation.  Other databases run the Core statement as usual.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import JSON, Connection
from sqlalchemy.dialects import sqlite as sqlite_dialect

__all__ = ["OnSqliteCursor", "json_value"]

_NAMED_SQLITE = sqlite_dialect.dialect(paramstyle="named")


def json_value(value: Any) -> Any:
    """A JSON column's value: the raw SQLite cursor returns its text, SQLAlchemy the decoded value."""
    return json.loads(value) if isinstance(value, str) else value


class OnSqliteCursor:
    """A Core statement compiled once for SQLite and run on the DBAPI cursor (see the module doc).

    ``stmt_for_others`` replaces the statement on other databases (a dialect-specific one,
    such as PostgreSQL's ``INSERT … ON CONFLICT``)."""

    __slots__ = ("defaults", "json_names", "sql", "stmt")

    def __init__(self, stmt: Any, stmt_for_others: Any = None) -> None:
        compiled = stmt.compile(dialect=_NAMED_SQLITE)
        self.stmt = stmt if stmt_for_others is None else stmt_for_others
        self.sql = str(compiled)
        self.defaults = dict(compiled.params)  # literal values, e.g. status = 'active'
        self.json_names = frozenset(n for n, b in compiled.binds.items() if isinstance(b.type, JSON))

    def __call__(self, conn: Connection, params: dict[str, Any] | None = None) -> Any:
        if conn.dialect.name != "sqlite":
            return conn.execute(self.stmt, params or {})
        values = {**self.defaults, **(params or {})}
        for name in self.json_names:
            if values.get(name) is not None:
                values[name] = json.dumps(values[name])
        return conn.connection.driver_connection.execute(self.sql, values)
