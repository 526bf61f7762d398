"""Fail closed when the database fails mid-run, and recover when it is back, without a restart.

Real databases, real faults: SQLite whose write lock another process holds beyond the busy
timeout; PostgreSQL whose gateway sessions are terminated (a server restart or failover),
whose gateway role may not log in for a while (unavailable), is read-only, or has the
decision chain locked by another session beyond ``lock_timeout``.  The gateway connects to
PostgreSQL as a role of its own, so that the faults touch only this test's connections.

A decision that cannot be committed is never an allow: the verdict is a ``store_error``
deny without a token, flagged as not recorded when even the denial could not be written,
and the task does not move.  The call after the fault clears is allowed.
"""

from __future__ import annotations

import re
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text

from intentgate.clock import FrozenClock
from intentgate.config import load_config
from intentgate.decide import Verdict
from intentgate.runtime import Runtime
from tests.conftest import INTENTS_DIR, POLICY_DIR
from tests.test_decide import MONDAY_10, begin_refund, call

STORE_TIMEOUT = 0.3
READ_TICKET = ("read_ticket", "tickets.get_ticket", {"ticket_id": "TCK-1"})
LOOKUP = ("lookup", "orders.get_order", {"order_id": "ORD-7"})


async def open_runtime(tmp_path: Path, url: str, pool_size: int = 4) -> Runtime:
    config = load_config(
        None, data_dir=tmp_path, intents_dir=INTENTS_DIR, policy_dir=POLICY_DIR,
        store={"url": url, "timeout_seconds": STORE_TIMEOUT, "pool_size": pool_size},
    )
    return await Runtime.open(config, clock=FrozenClock(MONDAY_10))


async def assert_store_denied(rt: Runtime, v: Verdict, task_id: str, steps_taken: int) -> None:
    assert v.outcome == "deny" and v.reasons == ["store_error"], v
    assert v.token is None and not v.forward
    assert v.recorded is False  # the denial itself could not be written either
    assert await rt.store.get_decision(v.decision_id) is None  # (read once the fault cleared)
    assert len((await rt.store.get_task(task_id)).history) == steps_taken


async def assert_allowed(rt: Runtime, v: Verdict) -> None:
    assert v.outcome == "allow" and v.token is not None, v
    stored = await rt.store.get_decision(v.decision_id)
    assert stored is not None and stored.outcome == "allow" and stored.token_jti == v.token.jti
    assert (await rt.store.get_token(v.token.jti)).status == "issued"


# ----- SQLite ----------------------------------------------------------------------------------


async def test_sqlite_locked_by_another_writer_denies_then_recovers(tmp_path: Path) -> None:
    path = tmp_path / "intentgate.db"
    rt = await open_runtime(tmp_path, f"sqlite:///{path}")
    try:
        task_id = await begin_refund(rt)
        await assert_allowed(rt, await rt.decider.decide(call(task_id, *READ_TICKET)))
        other = sqlite3.connect(path, isolation_level=None)  # e.g. a backup or a CLI writing
        try:
            other.execute("BEGIN EXCLUSIVE")
            v = await rt.decider.decide(call(task_id, *LOOKUP))
            other.execute("ROLLBACK")
        finally:
            other.close()
        await assert_store_denied(rt, v, task_id, steps_taken=1)
        await assert_allowed(rt, await rt.decider.decide(call(task_id, *LOOKUP)))
        assert rt.store.verify_chain().ok
    finally:
        await rt.aclose()


# ----- PostgreSQL ------------------------------------------------------------------------------


class PgFaults:
    """Faults a PostgreSQL superuser can cause to one role's sessions."""

    def __init__(self, admin_url: str, role: str, schema: str) -> None:
        self.engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        self.role = role
        self.schema = schema
        self._locker = None

    def sql(self, statement: str) -> None:
        with self.engine.connect() as c:
            c.execute(text(statement))

    def terminate(self) -> None:
        """End every session of the role, waiting until each one is gone."""
        with self.engine.connect() as c:
            c.execute(text("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = :r"),
                      {"r": self.role})

    def sessions(self) -> int:
        with self.engine.connect() as c:
            return c.execute(text("SELECT count(*) FROM pg_stat_activity WHERE usename = :r"),
                             {"r": self.role}).scalar_one()

    def lock_log(self) -> None:
        self._locker = self.engine.connect().execution_options(isolation_level="READ COMMITTED")
        self._locker.begin()
        self._locker.execute(text(f'LOCK TABLE "{self.schema}".decisions IN ACCESS EXCLUSIVE MODE'))

    def unlock_log(self) -> None:
        if self._locker is not None:
            self._locker.rollback()
            self._locker.close()
            self._locker = None

    def dispose(self) -> None:
        self.unlock_log()
        self.engine.dispose()


@pytest.fixture
def pg(pg_schema_url: str) -> Iterator[tuple[str, PgFaults]]:
    """(the gateway's URL, connecting as a fresh role; the faults for that role)."""
    schema = re.search(r"search_path%3D(\w+)", pg_schema_url).group(1)  # type: ignore[union-attr]
    role = f"ig_fault_{uuid.uuid4().hex[:10]}"
    faults = PgFaults(pg_schema_url, role, schema)
    faults.sql(f'CREATE ROLE "{role}" LOGIN')
    faults.sql(f'GRANT USAGE, CREATE ON SCHEMA "{schema}" TO "{role}"')
    url = make_url(pg_schema_url).set(username=role).render_as_string(hide_password=False)
    try:
        yield url, faults
    finally:
        faults.unlock_log()
        faults.sql(f'ALTER ROLE "{role}" LOGIN')
        faults.terminate()
        faults.sql(f'DROP OWNED BY "{role}"')
        faults.sql(f'DROP ROLE "{role}"')
        faults.dispose()


@pytest.fixture
async def pg_rt(tmp_path: Path, pg: tuple[str, PgFaults]) -> AsyncIterator[Runtime]:
    rt = await open_runtime(tmp_path, pg[0], pool_size=2)
    yield rt
    await rt.aclose()


@pytest.mark.postgres
async def test_postgres_sessions_terminated_cost_no_call(pg_rt: Runtime, pg: tuple[str, PgFaults]) -> None:
    """A server restart or failover ends the gateway's sessions: the next calls reconnect."""
    rt, faults = pg_rt, pg[1]
    task_id = await begin_refund(rt)
    faults.terminate()
    assert faults.sessions() == 0
    await assert_allowed(rt, await rt.decider.decide(call(task_id, *READ_TICKET)))
    faults.terminate()
    await assert_allowed(rt, await rt.decider.decide(call(task_id, *LOOKUP)))


@pytest.mark.postgres
@pytest.mark.parametrize("fault", ["unavailable", "read_only", "log_locked"])
async def test_postgres_fault_denies_then_recovers(pg_rt: Runtime, pg: tuple[str, PgFaults], fault: str) -> None:
    rt, faults = pg_rt, pg[1]
    role = faults.role
    task_id = await begin_refund(rt)
    await assert_allowed(rt, await rt.decider.decide(call(task_id, *READ_TICKET)))
    if fault == "unavailable":  # sessions end and new ones are refused
        faults.sql(f'ALTER ROLE "{role}" NOLOGIN')
        faults.terminate()
    elif fault == "read_only":  # e.g. a primary demoted to a standby
        faults.sql(f'ALTER ROLE "{role}" SET default_transaction_read_only = on')
        faults.terminate()
    else:  # another session holds the decision log's table beyond lock_timeout
        faults.lock_log()
    v = await rt.decider.decide(call(task_id, *LOOKUP))
    if fault == "unavailable":
        faults.sql(f'ALTER ROLE "{role}" LOGIN')
    elif fault == "read_only":
        faults.sql(f'ALTER ROLE "{role}" RESET default_transaction_read_only')
        faults.terminate()
    else:
        faults.unlock_log()
    await assert_store_denied(rt, v, task_id, steps_taken=1)
    await assert_allowed(rt, await rt.decider.decide(call(task_id, *LOOKUP)))
    assert rt.store.verify_chain().ok
