"""The store on real databases: SQLite always, PostgreSQL where reachable.

One suite, parametrised over both backends (the SPIRE pattern: every implementation
passes the same tests).
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from intentgate.checkpoints import AuditSigner
from intentgate.errors import StoreError
from intentgate.store import ApprovalRecord, DecisionRecord, Store, TaskAdvance, TokenRecord
from intentgate.store.db import Database
from intentgate.store.tables import DecisionRow
from intentgate.verify import ConsumeOutcome
from intentgate.workflow import HistoryEntry, Task

NOW = 1_800_000_000.0


def a_task(task_id: str = "tsk_1", **over) -> Task:
    fields = dict(
        id=task_id, intent="refund-order", intent_version="3", agent="spiffe://example.org/agent/support-1",
        params={"order_id": "ORD-7", "ticket_id": "TCK-1"}, reason="refund please",
        created_at=NOW, expires_at=NOW + 900,
    )
    fields.update(over)
    return Task(**fields)


def a_decision(n: int, **over) -> DecisionRecord:
    fields = dict(
        id=f"dec_{n}", at=NOW + n, agent="spiffe://example.org/agent/support-1", task_id="tsk_1",
        step="lookup", upstream="orders", tool="orders.get_order", outcome="allow", reasons=[],
        arguments={"order_id": "ORD-7", "amount": 12.5, "nested": {"b": [1, 2.25]}},
        policy_input={"call": {"arguments": {"x": 0.1}}}, timings_us={"policy": 12},
    )
    fields.update(over)
    return DecisionRecord(**fields)


def a_token(jti: str, task_id: str = "tsk_1") -> TokenRecord:
    return TokenRecord(
        jti=jti, decision_id="dec_1", task_id=task_id, agent="spiffe://example.org/agent/support-1",
        audience="orders", tool="orders.get_order", arguments_sha256="0" * 64, issued_at=NOW, expires_at=NOW + 30,
    )


async def test_task_round_trip(store: Store) -> None:
    task = a_task()
    await store.begin_task(task, a_decision(1, kind="task/begin"))
    loaded = await store.get_task("tsk_1")
    assert loaded == task
    assert await store.get_task("tsk_nope") is None


def a_signer(tmp_path) -> AuditSigner:
    return AuditSigner.open(tmp_path / "audit-keys", "intentgate/test")


async def test_log_verifies_and_detects_edits(store: Store, tmp_path) -> None:
    for n in range(1, 6):
        await store.commit_decision(a_decision(n))
    report = store.verify_chain()
    assert report.ok and report.checked == 5 and report.head_seq == 5 and report.unsealed == 5

    store.db.run_sync(lambda c: c.execute(text("UPDATE decisions SET outcome='deny' WHERE seq=3")))
    report = store.verify_chain()
    assert not report.ok
    assert any("seq 3" in p and "edited" in p for p in report.problems)


async def test_sealed_log_detects_deleted_rows(store: Store, tmp_path) -> None:
    for n in range(1, 6):
        await store.commit_decision(a_decision(n))
    signer = a_signer(tmp_path)
    sealed = await store.seal(now=NOW + 10, sign=signer.sign, origin=signer.origin)
    assert sealed is not None and sealed.checkpoint.size == 5 and sealed.added == 5
    assert await store.seal(now=NOW + 11, sign=signer.sign, origin=signer.origin) is None  # nothing new
    report = store.verify_log(keys=signer.public_keys(), origin=signer.origin, now=NOW + 12)
    assert report.ok and report.sealed == 5 and report.unsealed == 0 and report.checkpoints == 1
    store.db.run_sync(lambda c: c.execute(text("DELETE FROM decisions WHERE seq=2")))
    report = store.verify_chain()
    assert any("leaf 1" in p and "deleted" in p for p in report.problems)


async def test_sealed_log_detects_truncated_tail(store: Store, tmp_path) -> None:
    for n in range(1, 4):
        await store.commit_decision(a_decision(n))
    signer = a_signer(tmp_path)
    await store.seal(now=NOW + 10, sign=signer.sign, origin=signer.origin)
    store.db.run_sync(lambda c: c.execute(text("DELETE FROM audit_leaves WHERE idx = 2")))
    store.db.run_sync(lambda c: c.execute(text("DELETE FROM decisions WHERE seq=3")))
    report = store.verify_chain()
    assert not report.ok
    assert any("truncated" in p for p in report.problems)


async def test_unsealed_rows_are_reported_once_too_old(store: Store) -> None:
    await store.commit_decision(a_decision(1))
    assert store.verify_log(now=NOW + 60, max_unsealed=300).ok
    report = store.verify_log(now=NOW + 1000, max_unsealed=300)
    assert not report.ok and any("not sealed" in p for p in report.problems)


async def test_float_and_nested_json_survive_round_trip(store: Store) -> None:
    await store.commit_decision(a_decision(1))
    got = await store.get_decision("dec_1")
    assert got.arguments == {"order_id": "ORD-7", "amount": 12.5, "nested": {"b": [1, 2.25]}}
    assert got.seq == 1 and got.hash and got.prev_hash == "" and got.hash_v == 2
    assert store.verify_chain().ok


async def test_token_single_use(store: Store) -> None:
    await store.begin_task(a_task(), a_decision(1, kind="task/begin"))
    await store.commit_decision(a_decision(2), token=a_token("jti-a"))
    assert await store.consume("jti-a", expires_at=NOW + 30, now=NOW) is ConsumeOutcome.CONSUMED
    assert await store.consume("jti-a", expires_at=NOW + 30, now=NOW) is ConsumeOutcome.REPLAYED
    assert await store.consume("jti-zz", expires_at=NOW + 30, now=NOW) is ConsumeOutcome.UNKNOWN
    assert (await store.get_token("jti-a")).status == "consumed"


async def test_concurrent_consumers_burn_once(store: Store) -> None:
    await store.begin_task(a_task(), a_decision(1, kind="task/begin"))
    await store.commit_decision(a_decision(2), token=a_token("jti-race"))
    results = await asyncio.gather(
        *(store.consume("jti-race", expires_at=NOW + 30, now=NOW) for _ in range(16))
    )
    assert results.count(ConsumeOutcome.CONSUMED) == 1
    assert results.count(ConsumeOutcome.REPLAYED) == 15


async def test_end_task_revokes_unconsumed_tokens_only(store: Store) -> None:
    await store.begin_task(a_task(), a_decision(1, kind="task/begin"))
    await store.commit_decision(a_decision(2), token=a_token("jti-used"))
    await store.commit_decision(a_decision(3), token=a_token("jti-left"))
    await store.consume("jti-used", expires_at=NOW + 30, now=NOW)
    result = await store.end_task("tsk_1", "ended", NOW + 5, a_decision(4, kind="task/end"))
    assert result.committed and result.revoked == 1
    assert await store.consume("jti-left", expires_at=NOW + 30, now=NOW) is ConsumeOutcome.REVOKED
    assert (await store.get_task("tsk_1")).status == "ended"
    again = await store.end_task("tsk_1", "ended", NOW + 6, a_decision(5, kind="task/end"))
    assert not again.committed


async def test_task_advance_is_atomic(store: Store) -> None:
    task = a_task()
    await store.begin_task(task, a_decision(1, kind="task/begin"))
    entry = HistoryEntry(step="read_ticket", tool="tickets.get_ticket", decision="allow", decision_id="x", at=NOW)
    first = TaskAdvance(task, entry, complete=False)
    second = TaskAdvance(task, entry, complete=False)  # same expected version: a racing call
    r1, r2 = await asyncio.gather(
        store.commit_decision(a_decision(2), advance=first), store.commit_decision(a_decision(3), advance=second)
    )
    assert sorted([r1.committed, r2.committed]) == [False, True]
    loaded = await store.get_task("tsk_1")
    assert loaded.version == 1 and [h.step for h in loaded.history] == ["read_ticket"]
    # the losing decision was not written at all
    assert store.verify_chain().checked == 2


async def test_completing_task_revokes_other_tokens(store: Store) -> None:
    task = a_task()
    await store.begin_task(task, a_decision(1, kind="task/begin"))
    await store.commit_decision(a_decision(2), token=a_token("jti-old"))
    entry = HistoryEntry(step="comment", tool="tickets.add_comment", decision="allow", decision_id="dec_3", at=NOW)
    r = await store.commit_decision(
        a_decision(3), advance=TaskAdvance(task, entry, complete=True), token=a_token("jti-final")
    )
    assert r.committed and r.revoked == 1
    assert (await store.get_task("tsk_1")).status == "completed"
    assert (await store.get_token("jti-final")).status == "issued"
    assert (await store.get_token("jti-old")).status == "revoked"


async def test_expire_tasks(store: Store) -> None:
    await store.begin_task(a_task("tsk_old", expires_at=NOW + 1), a_decision(1, kind="task/begin"))
    await store.begin_task(a_task("tsk_new", expires_at=NOW + 900), a_decision(2, kind="task/begin"))
    await store.commit_decision(a_decision(3), token=a_token("jti-old", task_id="tsk_old"))
    n = await store.expire_tasks(NOW + 10, lambda t: a_decision(100, kind="task/expire", task_id=t.id))
    assert n == 1
    assert (await store.get_task("tsk_old")).status == "expired"
    assert (await store.get_task("tsk_new")).status == "active"
    assert (await store.get_token("jti-old")).status == "revoked"
    assert store.verify_chain().ok


async def test_hold_creates_pending_approval(store: Store) -> None:
    approval = ApprovalRecord(
        id="apr_1", decision_id="dec_1", agent="a", task_id="tsk_1", step="rotate", tool="secrets.rotate_credential",
        arguments_sha256="f" * 64, policy_revision="r1", reasons=["approval_required"], created_at=NOW,
        expires_at=NOW + 3600,
    )
    await store.commit_decision(a_decision(1, outcome="hold", reasons=["approval_required"]), approval=approval)
    got = await store.get_approval("apr_1")
    assert got.status == "pending" and got.decision_id == "dec_1"


async def test_counts(store: Store) -> None:
    await store.commit_decision(a_decision(1))
    await store.commit_decision(a_decision(2, outcome="deny", reasons=["step_out_of_order:refund"]))
    await store.commit_decision(a_decision(3, outcome="deny", reasons=["step_out_of_order:refund", "x"]))
    c = await store.counts()
    assert c["by_outcome"] == {"allow": 1, "deny": 2}
    assert c["by_reason"]["step_out_of_order:refund"] == 2


async def test_unreachable_database_is_a_store_error() -> None:
    db = Database("postgresql+psycopg://nobody@127.0.0.1:1/none", timeout=1.0, pool_size=1)
    store = Store(db)
    try:
        with pytest.raises(StoreError):
            await store.get_task("tsk_1")
    finally:
        store.close()


def test_in_memory_sqlite_is_refused() -> None:
    with pytest.raises(StoreError, match="in-memory"):
        Database("sqlite://")


async def test_sqlite_lock_held_elsewhere_falls_back_then_fails_closed(tmp_path) -> None:
    """Another process holds SQLite's write lock: the inline fast path must not wait on the
    event loop; the worker waits up to the timeout, then the store fails closed and recovers."""
    import sqlite3
    import threading

    path = tmp_path / "locked.db"
    store = Store.open(f"sqlite:///{path}", timeout=1.0)
    try:
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.3, other.execute, args=("COMMIT",))
        release.start()
        result = await store.commit_decision(a_decision(1))  # waits on the worker, then succeeds
        assert result.committed and store.db.inline_fallbacks == 1
        release.join()

        other.execute("BEGIN IMMEDIATE")  # now hold it past the timeout
        with pytest.raises(StoreError):
            await store.commit_decision(a_decision(2))
        other.execute("COMMIT")
        other.close()
        assert (await store.commit_decision(a_decision(3))).committed  # recovered, no restart
        assert [d.id for d in await store.list_decisions()] == ["dec_3", "dec_1"]
        assert store.verify_chain().ok
    finally:
        store.close()


async def test_time_filters_keep_every_match_when_times_are_slightly_out_of_log_order(store: Store) -> None:
    """A time bound becomes a seq range (binary search); decisions whose `at` is a little out of
    commit order (within the clock margin) must still all be found, and nothing outside."""
    from intentgate.store import queries

    base = 1_799_000_000.0
    # 400 decisions, a minute apart, each jittered by up to ±140 s (skew < the 300 s margin)
    jitter = [((i * 37) % 281) - 140 for i in range(400)]
    ats = [base + 60 * i + jitter[i] for i in range(400)]
    for i, at in enumerate(ats):
        await store.commit_decision(a_decision(i, at=at, outcome="deny" if i % 3 else "allow"))
    bounds = [(base + t, base + t + 1_500) for t in range(-600, 24_000, 613)] + [(base + 23_000, base + 99_999)]
    checked = 0
    for since, until in bounds:
        f = queries.DecisionFilter(outcome="deny", since=since, until=until, limit=500)
        found, _ = await store.search_decisions(f)
        expected = {f"dec_{i}" for i, at in enumerate(ats) if i % 3 and since <= at < until}
        assert {d.id for d in found} == expected, (since - base, until - base)
        checked += len(expected)
    assert checked > 500


@pytest.mark.postgres
async def test_a_decision_committing_after_a_newer_one_was_sealed_is_still_sealed(pg_schema_url: str,
                                                                                  tmp_path) -> None:
    """On PostgreSQL a transaction can take seq 1 and commit after seq 2 was sealed: the sealer
    looks behind the newest seq it sealed (the horizon), so the late row is sealed too, after."""
    store = Store.open(pg_schema_url, timeout=10.0, pool_size=2)
    signer = a_signer(tmp_path)
    try:
        late = a_decision(1)
        # the late transaction takes its number first (as nextval does inside it) and stays open
        reserved = store.db.run_sync(lambda c: c.execute(text(
            "SELECT nextval(pg_get_serial_sequence('decisions', 'seq'))")).scalar_one())
        await store.commit_decision(a_decision(2))
        first = await store.seal(now=NOW, sign=signer.sign, origin=signer.origin, horizon=120)
        assert first.checkpoint.size == 1
        from intentgate.store.records import HASH_VERSION, entry_hash

        def commit_late(conn) -> None:  # what append_decision writes, under the number taken before
            row = late.model_dump(exclude={"seq"})
            row.update(hash_v=HASH_VERSION, prev_hash="")
            row["hash"] = entry_hash(row)
            conn.execute(DecisionRow.__table__.insert().values(seq=reserved, **row))

        store.db.run_sync(commit_late)
        second = await store.seal(now=NOW + 5, sign=signer.sign, origin=signer.origin, horizon=120)
        assert second is not None and second.added == 1 and second.checkpoint.size == 2
        report = store.verify_log(keys=signer.public_keys(), origin=signer.origin, now=NOW + 6, max_unsealed=60)
        assert report.ok and report.sealed == 2 and report.unsealed == 0, report.problems
        leaves = store.db.run_sync(lambda c: c.execute(text("SELECT seq FROM audit_leaves ORDER BY idx")).all())
        assert [s for (s,) in leaves] == [reserved + 1, reserved]  # the tree's order: when each was sealed
    finally:
        store.close()
