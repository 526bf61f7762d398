"""Database plumbing: engine setup and running blocking work off the event loop.

SQLAlchemy Core over a connection held by each worker thread keeps the hot path cheap
(no per-call ORM session).  SQLite gets one worker (it has one writer anyway), WAL, and
``BEGIN IMMEDIATE`` transactions so that another process writing at the same time waits
on the busy timeout instead of failing a lock upgrade.  PostgreSQL gets a worker per pooled
connection.  Every operation has a timeout; any database failure becomes a ``StoreError``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from ..errors import StoreError

__all__ = ["Database"]

log = logging.getLogger("intentgate.store")
T = TypeVar("T")


class Database:
    """An engine plus worker threads that each hold one connection."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        pool_size: int = 8,
        sqlite_synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
    ) -> None:
        parsed = make_url(url)
        self.url = url
        self.timeout = timeout
        self.dialect = parsed.get_backend_name()
        self.is_sqlite = self.dialect == "sqlite"
        if self.is_sqlite:
            if parsed.database in (None, "", ":memory:"):
                raise StoreError("an in-memory SQLite database cannot be shared; give a file path")
            self.engine: Engine = create_engine(
                parsed,
                connect_args={"check_same_thread": False, "timeout": timeout},
            )
            self._install_sqlite_hooks(self.engine, sqlite_synchronous, timeout)
            workers = 1
        else:
            self.engine = create_engine(
                parsed, pool_size=pool_size, max_overflow=0, pool_timeout=timeout, pool_pre_ping=True
            )
            workers = pool_size
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="intentgate-db")
        self._local = threading.local()
        self._held: list[Connection] = []
        self._held_lock = threading.Lock()
        self._closed = False

    @staticmethod
    def _install_sqlite_hooks(engine: Engine, synchronous: str, timeout: float) -> None:
        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={synchronous}")
            cur.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    def _connection(self) -> Connection:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.invalidated:
            conn = self.engine.connect()
            self._local.conn = conn
            with self._held_lock:
                self._held.append(conn)
        return conn

    def _drop_connection(self) -> None:
        conn: Connection | None = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with self._held_lock:
                if conn in self._held:
                    self._held.remove(conn)
            try:
                conn.invalidate()
                conn.close()
            except Exception:  # noqa: BLE001 - best effort on a broken connection
                pass

    def _in_transaction(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        try:
            conn = self._connection()
            with conn.begin():
                return fn(conn, *args)
        except SQLAlchemyError as exc:
            self._drop_connection()
            raise StoreError(f"database error: {type(exc).__name__}: {exc}".splitlines()[0]) from exc

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` in one transaction on a worker, blocking (CLI, tests)."""
        return self._executor.submit(self._in_transaction, fn, args).result()

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """Run ``fn(conn, *args)`` in one transaction on a worker thread, with a timeout."""
        if self._closed:
            raise StoreError("store is closed")
        future = self._executor.submit(self._in_transaction, fn, args)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout or self.timeout)
        except TimeoutError as exc:
            future.cancel()
            raise StoreError(f"database operation timed out after {timeout or self.timeout}s") from exc

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=True)
        with self._held_lock:
            held, self._held = self._held, []
        for conn in held:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing anyway
                log.debug("error closing a held connection", exc_info=True)
        self.engine.dispose()
