"""Schema migrations (Alembic) on SQLite and PostgreSQL: fresh, legacy, behind, ahead, concurrent."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, Table, create_engine, insert, inspect, text
from typer.testing import CliRunner

from intentgate.cli import app
from intentgate.checkpoints import AuditSigner
from intentgate.errors import StoreError
from intentgate.store import Database, Store
from intentgate.store.migrate import BASELINE, ensure_schema, head_revision, schema_status
from intentgate.store import textsearch
from intentgate.store.ledger import append_decision
from intentgate.store.records import chain_hash
from intentgate.store.tables import metadata

from .test_store import a_decision


def _revision(url: str) -> str | None:
    eng = create_engine(url)
    with eng.connect() as conn:
        rev = MigrationContext.configure(conn).get_current_revision()
    eng.dispose()
    return rev


def test_fresh_database_is_migrated_to_head_and_matches_the_models(db_url: str) -> None:
    store = Store.open(db_url, timeout=10.0, pool_size=2)
    store.close()
    assert _revision(db_url) == head_revision()
    eng = create_engine(db_url)
    with eng.connect() as conn:
        # the migrations build exactly the tables the code declares: a model change without
        # a migration fails here (but for the text index's dialect-specific tables)
        opts = {"compare_type": True, "include_name": lambda name, kind, _parent: kind != "table"
                or name not in textsearch.UNMODELLED}
        diffs = compare_metadata(MigrationContext.configure(conn, opts=opts), metadata)
        head = conn.execute(text("SELECT id, seq, hash FROM chain_head")).all()
    eng.dispose()
    assert diffs == []
    assert head == [(1, 0, "0" * 64)]  # seeded, so replicas never race to insert it


def _pre_migration_schema(url: str) -> None:
    """The schema a gateway from before migrations created (the baseline), with no alembic_version."""
    from alembic import command

    from intentgate.store.migrate import alembic_config

    eng = create_engine(url)
    cfg = alembic_config()
    with eng.begin() as conn:
        cfg.attributes["connection"] = conn
        try:
            command.upgrade(cfg, BASELINE)
        finally:
            cfg.attributes.pop("connection", None)
        conn.execute(text("DROP TABLE alembic_version"))
    eng.dispose()


def _as_the_old_gateway_wrote_it(url: str, n: int) -> None:
    """Append decision ``n`` as a gateway from before checkpoints did: every column of the
    baseline, hash-chained to the previous row under the chain head."""
    eng = create_engine(url)
    with eng.begin() as conn:
        seq, prev = conn.execute(text("SELECT seq, hash FROM chain_head WHERE id = 1")).one()
        row = a_decision(n).model_dump(exclude={"hash_v", "hash"})
        row.update(seq=seq + 1, prev_hash=prev)
        row["hash"] = chain_hash(row)
        old_table = Table("decisions", MetaData(), autoload_with=conn)  # the baseline's columns
        conn.execute(insert(old_table).values(**row))
        conn.execute(text("UPDATE chain_head SET seq = :s, hash = :h WHERE id = 1"), {"s": row["seq"], "h": row["hash"]})
    eng.dispose()


async def test_database_from_before_migrations_is_stamped_and_keeps_its_rows(db_url: str, tmp_path: Path) -> None:
    _pre_migration_schema(db_url)
    _as_the_old_gateway_wrote_it(db_url, 1)
    _as_the_old_gateway_wrote_it(db_url, 2)
    db = Database(db_url, timeout=10.0, pool_size=1, inline=False)
    try:
        status = schema_status(db)
        assert status.legacy and status.current is None
    finally:
        db.close()

    store = Store.open(db_url, timeout=10.0, pool_size=2)  # migrations add hash_v (and the tree's tables)
    try:
        assert _revision(db_url) == head_revision()
        report = store.verify_chain()
        assert report.ok and report.checked == 2
        assert (await store.decision_detail("dec_1")) is not None
        await store.commit_decision(a_decision(3))  # a v2 row beside the v1 ones
        signer = AuditSigner.open(tmp_path / "audit", "intentgate/test")
        sealed = await store.seal(now=2_000_000_000.0, sign=signer.sign, origin=signer.origin)
        assert sealed is not None and sealed.checkpoint.size == 3
        # a column added later is not in either encoding's pinned field list: old and new rows still verify
        store.db.run_sync(lambda c: c.execute(text("ALTER TABLE decisions ADD COLUMN added_later TEXT DEFAULT 'x'")))
        report = store.verify_log(keys=signer.public_keys(), origin=signer.origin, now=2_000_000_001.0)
        assert report.ok and report.checked == 3 and report.sealed == 3, report.problems
        store.db.run_sync(lambda c: c.execute(text("UPDATE decisions SET outcome = 'deny' WHERE seq = 1")))
        assert any("seq 1" in p and "edited" in p for p in store.verify_chain().problems)  # v1 still checked
    finally:
        store.close()


async def test_empty_pre_migration_schema_gets_its_chain_head(db_url: str) -> None:
    """Tables made by the gateway's old ``create_all`` and no decision yet: no chain head row."""
    _pre_migration_schema(db_url)
    eng = create_engine(db_url)
    with eng.begin() as conn:
        conn.execute(text("DELETE FROM chain_head"))
    eng.dispose()
    store = Store.open(db_url, timeout=10.0, pool_size=2)
    try:
        await store.commit_decision(a_decision(1))
        report = store.verify_chain()
        assert report.ok and report.head_seq == 1
    finally:
        store.close()
    assert _revision(db_url) == head_revision()


def test_migrate_false_refuses_an_outdated_schema_and_touches_nothing(db_url: str) -> None:
    with pytest.raises(StoreError, match="intentgate db upgrade"):
        Store.open(db_url, migrate=False, timeout=10.0, pool_size=2)
    eng = create_engine(db_url)
    assert not inspect(eng).has_table("decisions")
    eng.dispose()
    Store.open(db_url, timeout=10.0, pool_size=2).close()
    Store.open(db_url, migrate=False, timeout=10.0, pool_size=2).close()  # current now: accepted


def test_a_schema_from_a_newer_gateway_is_refused(db_url: str) -> None:
    Store.open(db_url, timeout=10.0, pool_size=2).close()
    eng = create_engine(db_url)
    with eng.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    eng.dispose()
    with pytest.raises(StoreError, match="newer IntentGate"):
        Store.open(db_url, timeout=10.0, pool_size=2)
    assert _revision(db_url) == "9999_from_the_future"


def test_replicas_starting_together_migrate_once(db_url: str) -> None:
    """Eight stores open one fresh database at the same moment: all succeed, one migration runs."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def open_one() -> None:
        try:
            barrier.wait()
            s = Store.open(db_url, timeout=30.0, pool_size=1)
            s.close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    eng = create_engine(db_url)
    with eng.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).all() == [(head_revision(),)]
        assert conn.execute(text("SELECT count(*) FROM chain_head")).scalar() == 1
    eng.dispose()


def test_db_cli_status_and_upgrade(tmp_path: Path) -> None:
    cfg = tmp_path / "intentgate.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'var'}\n")
    runner = CliRunner()
    r = runner.invoke(app, ["db", "status", "--config", str(cfg)])
    assert r.exit_code == 1 and "none (empty database)" in r.output and "intentgate db upgrade" in r.output
    r = runner.invoke(app, ["db", "upgrade", "--config", str(cfg)])
    assert r.exit_code == 0 and f"none -> {head_revision()}" in r.output
    r = runner.invoke(app, ["db", "upgrade", "--config", str(cfg)])
    assert r.exit_code == 0 and "already at" in r.output
    r = runner.invoke(app, ["db", "status", "--config", str(cfg)])
    assert r.exit_code == 0 and "up to date" in r.output
    assert head_revision() >= BASELINE


def test_ensure_schema_is_idempotent(db_url: str) -> None:
    db = Database(db_url, timeout=10.0, pool_size=1, inline=False)
    try:
        first = ensure_schema(db)
        second = ensure_schema(db)
    finally:
        db.close()
    assert first.up_to_date and second.up_to_date and first.current == second.current == head_revision()


async def test_a_gateway_with_migrate_off_refuses_to_start_on_an_empty_database(tmp_path: Path) -> None:
    from intentgate.config import load_config
    from intentgate.runtime import Runtime
    from tests.conftest import INTENTS_DIR, POLICY_DIR

    config = load_config(None, data_dir=tmp_path, intents_dir=INTENTS_DIR, policy_dir=POLICY_DIR,
                         store={"migrate": False})
    with pytest.raises(StoreError, match="intentgate db upgrade"):
        await Runtime.open(config)
    Store.open(config.database_url).close()  # what `intentgate db upgrade` does
    rt = await Runtime.open(config)  # now current: it starts
    await rt.aclose()


async def test_task_histories_become_step_rows_and_running_tasks_go_on(db_url: str, tmp_path: Path) -> None:
    """Revision 0005 turns each task's history column into ``task_steps`` rows and a compact
    state: a task begun before the upgrade keeps its history for reviewers, and its next step
    is judged on what it did before (the refund's order id is bound to the lookup's)."""
    from alembic import command

    from intentgate.clock import FrozenClock
    from intentgate.config import load_config
    from intentgate.runtime import Runtime
    from intentgate.store.migrate import alembic_config
    from tests.conftest import INTENTS_DIR, POLICY_DIR
    from tests.test_decide import MONDAY_10, REFUND_PARAMS, call

    eng = create_engine(db_url)
    cfg = alembic_config()
    with eng.begin() as conn:
        cfg.attributes["connection"] = conn
        try:
            command.upgrade(cfg, "0004")
        finally:
            cfg.attributes.pop("connection", None)
        history = [
            {"step": "read_ticket", "tool": "tickets.get_ticket", "decision": "allow", "decision_id": "dec_a",
             "at": MONDAY_10 + 1, "arguments": {"ticket_id": "TCK-1"}},
            {"step": "lookup", "tool": "orders.get_order", "decision": "allow", "decision_id": "dec_b",
             "at": MONDAY_10 + 2, "arguments": {"order_id": "ORD-7"}},
        ]
        tasks = Table("tasks", MetaData(), autoload_with=conn)  # the 0004 columns, history among them
        for task_id, steps in (("tsk_old", history), ("tsk_fresh", [])):
            conn.execute(insert(tasks).values(
                id=task_id, intent="refund-order", intent_version="4", agent="spiffe://example.org/agent/support-1",
                params=REFUND_PARAMS, reason="before the upgrade", status="active", created_at=MONDAY_10,
                expires_at=MONDAY_10 + 3600, ended_at=None, history=steps, version=len(steps), issuer="orchestrator"))
    eng.dispose()

    config = load_config(None, data_dir=tmp_path / "var", intents_dir=INTENTS_DIR, policy_dir=POLICY_DIR,
                         store={"url": db_url})
    rt = await Runtime.open(config, clock=FrozenClock(MONDAY_10 + 10))  # migrates to head
    try:
        assert _revision(db_url) == head_revision()
        old = await rt.store.get_task("tsk_old")
        assert [h.model_dump() for h in old.history] == history
        assert old.state.calls == 2 and old.state.counts == {"read_ticket": 1, "lookup": 1}
        assert old.last_step == "lookup" and old.state.last_arguments["lookup"] == {"order_id": "ORD-7"}
        fresh = await rt.store.get_task("tsk_fresh")
        assert fresh.history == [] and fresh.state.calls == 0 and fresh.last_step is None

        refund = {"order_id": "ORD-8", "amount": 30, "currency": "EUR"}
        v = await rt.decider.decide(call("tsk_old", "refund", "payments.refund", refund))
        assert v.outcome == "deny" and "binding_mismatch:order_id" in v.reasons, v
        v = await rt.decider.decide(call("tsk_old", "refund", "payments.refund", {**refund, "order_id": "ORD-7"}))
        assert v.outcome == "allow", v
        done = await rt.store.get_task("tsk_old")
        assert [h.step for h in done.history] == ["read_ticket", "lookup", "refund"] and done.state.calls == 3
        v = await rt.decider.decide(call("tsk_fresh", "lookup", "orders.get_order", {"order_id": "ORD-7"}))
        assert v.outcome == "deny" and any(r.startswith("step_out_of_order") for r in v.reasons), v
    finally:
        await rt.aclose()


def _migrate(url: str, revision: str, *, down: bool = False) -> None:
    from alembic import command

    from intentgate.store.migrate import alembic_config

    eng = create_engine(url)
    cfg = alembic_config()
    with eng.begin() as conn:
        cfg.attributes["connection"] = conn
        try:
            (command.downgrade if down else command.upgrade)(cfg, revision)
        finally:
            cfg.attributes.pop("connection", None)
    eng.dispose()


async def test_the_rollup_and_text_index_are_built_from_the_decisions_there_were(db_url: str) -> None:
    """Revision 0006 counts the decisions already in the log into ``decision_rollup`` (what the
    round would have folded, exactly) and indexes their text; downgrading drops both."""
    import random

    from intentgate.store import rollup
    from intentgate.store.queries import DecisionFilter, search_decisions
    from tests.randomlog import START, append, assert_overview, random_records, rollup_rows

    _migrate(db_url, "0005")
    records = random_records(random.Random(11), 120, START)
    db = Database(db_url, timeout=10.0, pool_size=1, inline=False)
    try:
        db.run_sync(lambda conn: [append_decision(conn, r) for r in records])
    finally:
        db.close()
    store = Store.open(db_url, timeout=10.0, pool_size=2)  # 0006 builds them
    try:
        state = store.db.run_sync(rollup.folded_state)
        assert state.seq == records[-1].seq and state.holes == () and state.text_index
        assert rollup_rows(store) == dict(  # what the round would have folded
            rollup.tally((r.at, r.outcome, r.agent, r.tool, r.intent, json.dumps(r.reasons)) for r in records))
        assert_overview(store, records, [START - 3600, START + 3 * 86400 + 0.5])
        hit = next(r for r in records if r.arguments)
        term = hit.arguments["order_id"]
        found = store.db.run_sync(lambda conn: search_decisions(conn, DecisionFilter(q=term, limit=500)))
        assert hit.id in {r.id for r in found}
        # the round takes over where the migration stopped
        more = random_records(random.Random(12), 10, START + 4 * 86400)
        append(store, more)
        await store.fold(now=START)
        assert store.db.run_sync(rollup.folded_state).seq == more[-1].seq
        assert_overview(store, records + more, [START - 3600, START + 6 * 86400])
    finally:
        store.close()

    _migrate(db_url, "0005", down=True)
    eng = create_engine(db_url)
    names = set(inspect(eng).get_table_names())
    eng.dispose()
    assert not names & ({"decision_rollup", "decision_rollup_names", "decision_rollup_state"} | textsearch.UNMODELLED)
    assert "decisions" in names
    Store.open(db_url, timeout=10.0, pool_size=2).close()  # and up again
    assert _revision(db_url) == head_revision()
