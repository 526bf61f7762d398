"""Decision-log benchmark: the append on the decision path, and sealing, side by side.

Prints, in one run:

1. **The append, call for call** (SQLite WAL, and PostgreSQL when it answers): one decision
   committed through ``Store.commit_decision`` as the gateway does now (the row carries its own
   leaf hash, the database numbers it, no shared lock), interleaved call for call with the
   append of the previous release (read the ``chain_head`` row, ``FOR UPDATE`` on PostgreSQL,
   hash with the chain link, insert, move the head), run here on the same tables, in the same
   transaction shape, through the same compiled-statement path.  p50/p99 and the difference.
2. **Concurrent writers on PostgreSQL** (``--writers``, default 8 threads, each its own
   connection, as several replicas' workers are): decisions committed per second for
   ``--seconds`` with the lock-free append, then with the chain-head lock.
3. **Sealing**: one sealer round over ``--seal`` waiting decisions (leaves written, frontier
   extended, checkpoint signed), per 1,000 decisions; and an idle round.

Usage: ``python bench/ledger.py [--calls 3000] [--writers 8] [--seconds 5] [--seal 20000]
[--pg-url URL]`` (default PostgreSQL: ``$INTENTGATE_TEST_PG_URL`` or the one ``.ci/postgres.sh``
starts; skipped with a message when it does not answer).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import bindparam, create_engine, insert, select, text, update

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from intentgate.checkpoints import AuditSigner  # noqa: E402
from intentgate.store import DecisionRecord, Store  # noqa: E402
from intentgate.store.compiled import OnSqliteCursor  # noqa: E402
from intentgate.store.ledger import append_decision  # noqa: E402
from intentgate.store.records import chain_hash  # noqa: E402
from intentgate.store.tables import ChainHeadRow, DecisionRow  # noqa: E402

console = Console()
decisions_t, chain_t = DecisionRow.__table__, ChainHeadRow.__table__
_HEAD = select(chain_t.c.seq, chain_t.c.hash).where(chain_t.c.id == 1)
_HEAD_LOCKED = _HEAD.with_for_update()
_MOVE = update(chain_t).where(chain_t.c.id == 1).values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))
_INSERT_ALL = insert(decisions_t)
_head, _move, _insert_all = OnSqliteCursor(_HEAD), OnSqliteCursor(_MOVE), OnSqliteCursor(_INSERT_ALL)
DEFAULT_PG = "postgresql+psycopg://root@127.0.0.1:5432/test"


def chained_append(conn: Any, record: DecisionRecord) -> int:
    """The previous release's append (every writer serialised on the chain head row)."""
    head = _head(conn).fetchone() if conn.dialect.name == "sqlite" else conn.execute(_HEAD_LOCKED).first()
    prev_seq, prev_hash = head
    row = record.model_dump()
    row.update(seq=prev_seq + 1, prev_hash=prev_hash, hash_v=1)
    row["hash"] = chain_hash(row)
    _insert_all(conn, row)
    _move(conn, {"new_seq": row["seq"], "new_hash": row["hash"]})
    return row["seq"]


def a_decision(n: int) -> DecisionRecord:
    return DecisionRecord(
        id=f"dec_{uuid.uuid4().hex[:20]}", at=1_900_000_000.0 + n, agent="spiffe://example.org/agent/support-1",
        intent="refund-order", intent_version="3", task_id=f"tsk_{n % 500}", step="lookup", upstream="orders",
        tool="orders.get_order", arguments={"order_id": f"ORD-{n}"}, arguments_sha256="0" * 64, outcome="allow",
        reasons=[], policy_input={"call": {"arguments": {"order_id": f"ORD-{n}"}}, "task": {"history": []}},
        policy_result={"allow": True, "reasons": []}, policy_revision="r1", intents_revision="i1",
        timings_us={"policy": 60, "store": 300})


def pct(samples_ns: list[int]) -> tuple[float, float]:
    ms = sorted(s / 1e6 for s in samples_ns)
    return statistics.median(ms), ms[min(len(ms) - 1, int(len(ms) * 0.99))]


async def call_for_call(store: Store, before: Store, calls: int) -> tuple[list[int], list[int]]:
    """Each append into its own database (same kind, same schema), alternating call by call."""
    new: list[int] = []
    old: list[int] = []
    for n in range(calls):
        for kind, out in (("new", new), ("old", old)) if n % 2 else (("old", old), ("new", new)):
            record = a_decision(n)
            t = time.perf_counter_ns()
            if kind == "new":
                await store.commit_decision(record)
            else:
                await before.db.run(lambda conn, r=record: chained_append(conn, r))
            out.append(time.perf_counter_ns() - t)
    return new[50:], old[50:]  # warm-up left out


def concurrent(url: str, writers: int, seconds: float, chained: bool) -> float:
    """Decisions committed per second by ``writers`` threads, each on its own connection."""
    engine = create_engine(url, pool_size=writers, max_overflow=0)
    stop = time.monotonic() + seconds
    counts = [0] * writers

    def work(i: int) -> None:
        n = 0
        with engine.connect() as conn:
            while time.monotonic() < stop:
                with conn.begin():
                    (chained_append if chained else append_decision)(conn, a_decision(i * 10_000_000 + n))
                n += 1
        counts[i] = n

    threads = [threading.Thread(target=work, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine.dispose()
    return sum(counts) / seconds


def pg_schema(url: str) -> str | None:
    """A fresh schema on the PostgreSQL at ``url``, as a URL; None if it does not answer."""
    schema = f"bench_ledger_{uuid.uuid4().hex[:8]}"
    try:
        engine = create_engine(url, connect_args={"connect_timeout": 3})
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        engine.dispose()
    except Exception as exc:  # noqa: BLE001 (any failure: no PostgreSQL here)
        console.print(f"PostgreSQL at {url} does not answer ({type(exc).__name__}); its rows are left out")
        return None
    return f"{url}?options=-csearch_path%3D{schema}"


def drop_schema(url: str) -> None:
    schema = url.rsplit("%3D", 1)[1]
    engine = create_engine(url.split("?")[0])
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=3000, help="appends of each kind, call for call (default 3000)")
    ap.add_argument("--writers", type=int, default=8, help="concurrent PostgreSQL writers (default 8)")
    ap.add_argument("--seconds", type=float, default=5.0, help="time per concurrent run (default 5)")
    ap.add_argument("--seal", type=int, default=20_000, help="decisions waiting for the sealing round (default 20000)")
    ap.add_argument("--pg-url", default=os.environ.get("INTENTGATE_TEST_PG_URL", DEFAULT_PG))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="intentgate-bench-ledger-"))
    pg, pg_before = pg_schema(args.pg_url), pg_schema(args.pg_url)
    appends = Table(title=f"one decision appended and committed, call for call, {args.calls} each (ms)")
    for col in ("database", "append", "p50", "p99"):
        appends.add_column(col, justify="right" if col in ("p50", "p99") else "left")
    targets = [("SQLite WAL", f"sqlite:///{work / 'now.db'}", f"sqlite:///{work / 'before.db'}")]
    targets += [("PostgreSQL", pg, pg_before)] if pg and pg_before else []
    for name, url, url_before in targets:
        store = Store.open(url, timeout=10.0, pool_size=4)
        before = Store.open(url_before, timeout=10.0, pool_size=4)
        try:
            new, old = await call_for_call(store, before, args.calls)
        finally:
            store.close()
            before.close()
        (n50, n99), (o50, o99) = pct(new), pct(old)
        appends.add_row(name, "now: own leaf hash, no shared lock", f"{n50:.3f}", f"{n99:.3f}")
        appends.add_row(name, "before: chain head read, link hashed, head moved", f"{o50:.3f}", f"{o99:.3f}")
        appends.add_row(name, "difference", f"{n50 - o50:+.3f}", f"{n99 - o99:+.3f}")
    console.print(appends)

    if pg and pg_before:
        table = Table(title=f"{args.writers} concurrent writers on one PostgreSQL, {args.seconds:.0f} s each")
        table.add_column("append")
        table.add_column("decisions/s", justify="right")
        free = concurrent(pg, args.writers, args.seconds, chained=False)
        locked = concurrent(pg_before, args.writers, args.seconds, chained=True)
        table.add_row("now: no shared lock", f"{free:.0f}")
        table.add_row("before: every writer behind the chain head row lock", f"{locked:.0f}")
        table.add_row("ratio", f"{free / locked:.2f}x")
        console.print(table)
    for url in (pg, pg_before):
        if url:
            drop_schema(url)

    store = Store.open(f"sqlite:///{work / 'seal.db'}", timeout=30.0)
    signer = AuditSigner.open(work / "audit-keys", "intentgate/bench")
    try:
        for n in range(0, args.seal, 2000):
            def fill(conn: Any, start: int = n) -> None:
                for i in range(start, min(start + 2000, args.seal)):
                    append_decision(conn, a_decision(i))
            store.db.run_sync(fill)
        t = time.perf_counter()
        rounds = 0
        while await store.seal(now=time.time(), sign=signer.sign, origin=signer.origin, batch=args.seal):
            rounds += 1
        sealed_s = time.perf_counter() - t
        t = time.perf_counter()
        await store.seal(now=time.time(), sign=signer.sign, origin=signer.origin)
        idle_ms = (time.perf_counter() - t) * 1000
    finally:
        store.close()
    table = Table(title="sealing (SQLite WAL)")
    table.add_column("round")
    table.add_column("time", justify="right")
    table.add_row(f"{args.seal} waiting decisions sealed, one checkpoint signed", f"{sealed_s * 1000:.0f} ms "
                  f"({sealed_s * 1e6 / args.seal:.1f} µs per decision)")
    table.add_row("idle round (nothing waiting)", f"{idle_ms:.2f} ms")
    console.print(table)


if __name__ == "__main__":
    asyncio.run(main())
