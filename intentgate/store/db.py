"""Database plumbing: engine setup and running blocking work off the event loop.

SQLAlchemy Core over a connection held by each worker thread keeps the hot path cheap
(no per-call ORM session).  SQLite gets one worker (it has one writer anyway), WAL, and
``BEGIN IMMEDIATE`` transactions so that another process writing at the same time waits
on the busy timeout instead of failing a lock upgrade.  PostgreSQL gets a worker per pooled
connection.  Every operation has a timeout; any database failure becomes a ``StoreError``,
and the connection that failed is replaced by a new one on next use.  A transaction whose
held connection turns out to be dead (server restart, failover) before it could commit is
run once more on a new connection, so a database that came back costs no failed calls.

SQLite fast path (``inline=True``, the default): a thread hop costs more than a whole SQLite
WAL transaction here, so a transaction first runs on the calling (event-loop) thread over a
connection with ``busy_timeout=0`` and automatic checkpoints off; it can therefore never wait
on a lock.  If the write lock is taken (another process is writing), the transaction is
rolled back and rerun on the worker, which may wait up to the timeout.  WAL checkpoints run
on the worker, in the background.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

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
        inline: bool = True,
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
            self.inline = inline
        else:
            connect_args: dict[str, Any] = {}
            if self.dialect == "postgresql":
                # the server ends anything that would outlast our timeout, so a worker never
                # sits in a statement after its caller has failed closed
                ms = int(timeout * 1000)
                extra = f"-c statement_timeout={ms} -c lock_timeout={ms}"
                given = parsed.query.get("options")
                given = given if isinstance(given, str) else " ".join(given or ())
                connect_args = {"connect_timeout": max(1, int(timeout)), "options": f"{given} {extra}".strip()}
            self.engine = create_engine(
                parsed,
                pool_size=pool_size,
                max_overflow=0,
                pool_timeout=timeout,
                pool_pre_ping=True,
                connect_args=connect_args,
            )
            workers = pool_size
            self.inline = False
        self._inline_conn: Connection | None = None
        self._inline_commits = 0
        self.inline_fallbacks = 0
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
            # switching a new file to WAL needs it to itself, and SQLite answers "locked" at
            # once rather than through the busy handler: try again until the timeout
            deadline = time.monotonic() + timeout
            while True:
                try:
                    cur.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)
            cur.execute(f"PRAGMA synchronous={synchronous}")
            cur.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            # writers take the lock up front; readers never lock anything (WAL snapshot)
            # (on the DBAPI connection directly: a full SQLAlchemy execution costs more than BEGIN)
            raw = conn.connection.driver_connection
            raw.execute("BEGIN" if conn.info.get("read_only") else "BEGIN IMMEDIATE")

    def _connection(self) -> Connection:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.invalidated:
            conn = self.engine.connect()
            self._local.conn = conn
            with self._held_lock:
                self._held.append(conn)
        return conn

    def _discard(self, conn: Connection | None) -> None:
        """Invalidate and forget a failed connection (the next transaction opens a new one)."""
        if conn is None:
            return
        with self._held_lock:
            if conn in self._held:
                self._held.remove(conn)
        try:
            conn.invalidate()
            conn.close()
        except Exception:  # noqa: BLE001 - best effort on a broken connection
            pass

    def _drop_connection(self) -> None:
        conn: Connection | None = getattr(self._local, "conn", None)
        self._local.conn = None
        self._discard(conn)

    def _in_transaction(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        read_only: bool = False,
        abandoned: threading.Event | None = None,
    ) -> T:
        retried = False
        while True:
            held: Connection | None = getattr(self._local, "conn", None)
            reused = held is not None and not held.closed and not held.invalidated
            committing = False
            try:
                conn = self._connection()
                conn.info["read_only"] = read_only
                with conn.begin() as tx:
                    result = fn(conn, *args)
                    if abandoned is not None and abandoned.is_set():
                        # the caller timed out and has already failed closed: write nothing
                        tx.rollback()
                        raise StoreError("database operation abandoned after its timeout")
                    committing = True
                return result
            except (SQLAlchemyError, sqlite3.Error) as exc:
                self._drop_connection()
                if (
                    not retried and reused and not committing
                    and isinstance(exc, DBAPIError) and exc.connection_invalidated
                    and not (abandoned is not None and abandoned.is_set())
                ):
                    # the held connection had died (server restart, failover, terminated
                    # backend) before this transaction could commit anything: run it once
                    # more on a new connection instead of failing the call
                    log.warning("database connection lost; retrying once on a new connection")
                    retried = True
                    continue
                raise StoreError(f"database error: {type(exc).__name__}: {exc}".splitlines()[0]) from exc

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` in one transaction on a worker, blocking (CLI, tests)."""
        return self._executor.submit(self._in_transaction, fn, args).result()

    def _inline_connection(self) -> Connection:
        conn = self._inline_conn
        if conn is None or conn.closed or conn.invalidated:
            conn = self.engine.connect()
            raw = conn.connection.dbapi_connection
            raw.execute("PRAGMA busy_timeout=0")  # never wait on the event loop
            raw.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints happen on the worker
            self._inline_conn = conn
            with self._held_lock:
                self._held.append(conn)
        return conn

    def _drop_inline(self) -> None:
        conn, self._inline_conn = self._inline_conn, None
        self._discard(conn)

    def _try_inline(
        self, fn: Callable[..., T], args: tuple[Any, ...], read_only: bool = False
    ) -> tuple[bool, T | None]:
        """(True, result) when done inline; (False, None) when the write lock was taken."""
        try:
            conn = self._inline_connection()
            conn.info["read_only"] = read_only
            with conn.begin():
                result = fn(conn, *args)
        except (OperationalError, sqlite3.OperationalError) as exc:
            # BEGIN IMMEDIATE runs on the DBAPI connection, so its error arrives unwrapped
            text = str(getattr(exc, "orig", exc))
            if "locked" in text or "busy" in text:
                self.inline_fallbacks += 1
                return False, None
            self._drop_inline()
            raise StoreError(f"database error: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
        except (SQLAlchemyError, sqlite3.Error) as exc:
            self._drop_inline()
            raise StoreError(f"database error: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
        if read_only:
            return True, result
        self._inline_commits += 1
        if self._inline_commits % 512 == 0:
            self._executor.submit(self._checkpoint)
        return True, result

    def _checkpoint(self) -> None:
        try:
            self._connection().connection.dbapi_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except Exception:  # noqa: BLE001 - a missed checkpoint is retried at the next one
            log.warning("WAL checkpoint failed", exc_info=True)

    async def run(
        self, fn: Callable[..., T], *args: Any, timeout: float | None = None, read_only: bool = False,
        inline: bool = True,
    ) -> T:
        """Run ``fn(conn, *args)`` in one transaction (see the module doc), with a timeout;
        ``inline=False``: on the worker even where SQLite could run it inline (background work
        that would hold the event loop too long)."""
        if self._closed:
            raise StoreError("store is closed")
        if self.inline and inline:
            done, result = self._try_inline(fn, args, read_only)
            if done:
                return result  # type: ignore[return-value]
        abandoned = threading.Event()
        future = self._executor.submit(self._in_transaction, fn, args, read_only, abandoned)
        limit = timeout or self.timeout
        try:
            # the worker gives up on its own after `limit` (busy/lock timeouts); the grace
            # covers the hop, and anything still running after it is rolled back, not committed
            async with asyncio.timeout(limit + 1.0):
                return await asyncio.wrap_future(future)
        except TimeoutError as exc:
            abandoned.set()
            future.cancel()
            raise StoreError(f"database operation timed out after {limit}s") from exc

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._inline_conn is not None:
            self._executor.submit(self._checkpoint)
        self._executor.shutdown(wait=True)
        with self._held_lock:
            held, self._held = self._held, []
        for conn in held:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing anyway
                log.debug("error closing a held connection", exc_info=True)
        self.engine.dispose()
