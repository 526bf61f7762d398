"""Schema migrations (Alembic), applied when a store opens or by ``intentgate db upgrade``.

One transaction does it all, under a lock, so replicas starting together on one database
migrate it once: SQLite's write lock (``BEGIN IMMEDIATE``) or a PostgreSQL transaction-level
advisory lock; whoever comes second finds the schema at head and does nothing.  A database
created before migrations existed (tables present, no ``alembic_version``) is stamped at the
baseline, which is exactly the schema it holds.  A database at a revision this gateway does
not know (written by a newer version) is refused rather than touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, insert, select, text

from ..errors import StoreError
from .db import Database
from .records import GENESIS_HASH
from .tables import ChainHeadRow

__all__ = ["BASELINE", "SchemaStatus", "alembic_config", "ensure_schema", "head_revision", "schema_status"]

BASELINE = "0001"
_LOCK_KEY = 0x1E7E_6A7E  # pg_advisory_xact_lock key: "intentgate schema"
_chain_t = ChainHeadRow.__table__


@dataclass(frozen=True)
class SchemaStatus:
    current: str | None  # None: empty database
    head: str
    legacy: bool = False  # tables present, never stamped

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


@cache
def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    return cfg


@cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    head = _scripts().get_current_head()
    assert head is not None, "the migrations directory has no revisions"
    return head


def _status(conn: Connection) -> SchemaStatus:
    current = MigrationContext.configure(conn).get_current_revision()
    legacy = current is None and inspect(conn).has_table("decisions")
    return SchemaStatus(current, head_revision(), legacy)


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    # SQLite: the transaction began with BEGIN IMMEDIATE and already holds the write lock


def _known(revision: str) -> bool:
    try:
        return _scripts().get_revision(revision) is not None
    except Exception:  # noqa: BLE001 - alembic raises several kinds for an unknown id
        return False


def _upgrade(conn: Connection, migrate: bool) -> SchemaStatus:
    _lock(conn)
    status = _status(conn)
    if status.current is not None and not _known(status.current):
        raise StoreError(
            f"the database schema is at revision {status.current}, which this gateway does not know "
            f"(its newest is {status.head}): it was written by a newer IntentGate; upgrade the gateway"
        )
    if status.up_to_date:
        return status
    if not migrate:
        where = "a schema from before migrations" if status.legacy else f"revision {status.current or 'none (empty)'}"
        raise StoreError(
            f"the database schema is at {where}, this gateway needs {status.head}: "
            "run `intentgate db upgrade` (or set store.migrate: true)"
        )
    cfg = alembic_config()
    cfg.attributes["connection"] = conn
    try:
        if status.legacy:
            command.stamp(cfg, BASELINE)
            if conn.execute(select(_chain_t.c.id)).first() is None:
                conn.execute(insert(_chain_t).values(id=1, seq=0, hash=GENESIS_HASH))
        command.upgrade(cfg, "head")
    finally:
        cfg.attributes.pop("connection", None)
    return _status(conn)


def ensure_schema(db: Database, *, migrate: bool = True) -> SchemaStatus:
    """Bring ``db`` to the newest schema (or, with ``migrate=False``, fail unless it is there)."""
    return db.run_sync(_upgrade, migrate)


def schema_status(db: Database) -> SchemaStatus:
    """Where the database's schema stands, without changing anything."""
    return db.run_sync(_status)
