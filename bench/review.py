"""Reviewer-side benchmark on a large history: denials search, text search, one decision page,
the overview, replay.

1. Real templates: a handful of task stories (a conformant refund, a skipped step, a binding
   mismatch, a held large refund, a refund over the limit, a call on an unknown task) run
   through the real pipeline (embedded Rego, SQLite) once.
2. The store is filled with ``--rows`` decisions (default 1,000,000) cloned from those stories:
   one task per story copy, agents spread over 1,000 ids, times over 30 days, each row with a
   new id and its own record hash (``entry_hash``, encoding v2), as the gateway writes them;
   then folded into the overview's roll-up and the text index, as a serving gateway's
   background round does after each seal (timed; ``intentgate audit seal`` would also seal
   them into the tree).
3. Timed through the reviewer service (the code behind ``GET /v1/decisions`` and
   ``GET /v1/decisions/{id}``): the denials query with two filters (several pairs), text
   searches (``q``) that match inside call arguments, that match a task id and that
   match nothing (with and without an outcome filter, and one made of frequent trigrams), and
   one decision page; p50/p95 over ``--samples`` queries each.  Target: p95 ≤ 100 ms.  Then
   the reviewer overview (``GET /v1/overview``, ``/ui/overview``: counts per bucket, top lists)
   for the last 1h, 6h, 24h, 7d and 30d, ending at random points of the history (30d: the
   whole of it), over ``--samples`` / 4 runs each.  The process's full garbage collections
   (about 0.1 s over the loaded modules, whatever is queried) are frozen out after setup.
4. Replay of ``--replay`` decisions (default 100,000) against the same policy: decisions/s,
   next to the decide benchmark's rate as a baseline.

Usage: ``python bench/review.py [--rows 1000000] [--samples 200] [--replay 100000] [--db FILE]``
(``--db`` keeps the filled database for another run: filling takes a few minutes.)
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import gc
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from intentgate.clock import FrozenClock  # noqa: E402
from intentgate.config import load_config  # noqa: E402
from intentgate.decide import CallRequest  # noqa: E402
from intentgate.errors import GatewayError  # noqa: E402
from intentgate.identity import AgentIdentity  # noqa: E402
from intentgate.intents import load_intents  # noqa: E402
from intentgate.policy import make_engine  # noqa: E402
from intentgate.replay import Replayer  # noqa: E402
from intentgate.review import DecisionQuery, ReviewService  # noqa: E402
from intentgate.review.overview import RANGES, OverviewQuery  # noqa: E402
from intentgate.runtime import Runtime  # noqa: E402
from intentgate.store import Store  # noqa: E402
from intentgate.store.records import HASH_VERSION, entry_hash  # noqa: E402
from intentgate.tasks import TaskIssuer  # noqa: E402

console = Console()
AGENT = "spiffe://example.org/agent/support-1"
MONDAY_10 = 1_799_056_800.0
DAYS = 30
PARAMS = {"ticket_id": "TCK-1", "order_id": "ORD-7"}


async def stories(data_dir: Path) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
    """Run each story once through the real pipeline; return its task row and decision rows."""
    config = load_config(None, data_dir=data_dir, intents_dir=ROOT / "intents", policy_dir=ROOT / "opa")
    rt = await Runtime.open(config, clock=FrozenClock(MONDAY_10))
    agent = AgentIdentity(id=AGENT)
    d = rt.decider

    def call(task: str, step: str, tool: str, args: dict[str, Any]) -> CallRequest:
        upstream, _, name = tool.partition(".")
        return CallRequest(agent=agent, task_id=task, step=step, upstream=upstream, tool=name, untrusted_arguments=args)

    read = ("read_ticket", "tickets.get_ticket", {"ticket_id": "TCK-1"})
    lookup = ("lookup", "orders.get_order", {"order_id": "ORD-7"})
    refund = ("refund", "payments.refund", {"order_id": "ORD-7", "amount": 30, "currency": "EUR"})
    scripts = {
        "conformant": [read, lookup, refund, ("comment", "tickets.add_comment", {"ticket_id": "TCK-1", "body": "ok"})],
        "skipped_step": [refund, read, lookup, refund],
        "binding": [read, ("lookup", "orders.get_order", {"order_id": "ORD-9"}), lookup, refund],
        "held": [read, lookup, ("refund", "payments.refund", {"order_id": "ORD-7", "amount": 2500, "currency": "EUR"})],
        "over_limit": [read, lookup, ("refund", "payments.refund", {"order_id": "ORD-7", "amount": 4000,
                                                                     "currency": "EUR"})],
    }
    try:
        for script in scripts.values():
            started = await d.begin_task(agent, "refund-order", PARAMS, "benchmark story", issuer=ISSUER)
            for step, tool, args in script:
                await d.decide(call(started.task_id, step, tool, args))
            rt.clock.advance(60)  # type: ignore[attr-defined]
        await d.decide(call("tsk_unknown", "read_ticket", "tickets.get_ticket", {"ticket_id": "TCK-1"}))
    finally:
        await rt.aclose()
    db = sqlite3.connect(data_dir / "intentgate.db")
    db.row_factory = sqlite3.Row
    tasks = [dict(r) for r in db.execute("SELECT * FROM tasks ORDER BY created_at")]
    steps: dict[str, list[dict[str, Any]]] = {}
    for r in db.execute("SELECT * FROM task_steps ORDER BY task_id, n"):
        steps.setdefault(r["task_id"], []).append(dict(r))
    for t in tasks:
        t["_steps"] = steps.get(t["id"], [])
    rows = [dict(r) for r in db.execute("SELECT * FROM decisions ORDER BY seq")]
    db.close()
    by_task: dict[str | None, list[dict[str, Any]]] = {}
    for row in rows:
        by_task.setdefault(row["task_id"], []).append(row)
    groups = [by_task[t["id"]] for t in tasks] + [by_task.get("tsk_unknown", [])]
    return tasks + [None], groups  # type: ignore[list-item]


ISSUER = TaskIssuer("orchestrator", "spiffe://example.org/orchestrator", "rest")  # tasks are begun for agents

def fill(path: Path, rows: int, templates: tuple[list[Any], list[list[dict[str, Any]]]]) -> None:
    """Clone the stories until ``rows`` decisions are in ``path`` (chain included)."""
    tasks, groups = templates
    Store.open(f"sqlite:///{path}").close()  # the schema, exactly as the gateway creates it
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    columns = [r[1] for r in db.execute("PRAGMA table_info(decisions)")]
    task_columns = [r[1] for r in db.execute("PRAGMA table_info(tasks)")]
    insert = f"INSERT INTO decisions ({','.join(columns)}) VALUES ({','.join('?' * len(columns))})"
    insert_task = f"INSERT INTO tasks ({','.join(task_columns)}) VALUES ({','.join('?' * len(task_columns))})"
    step_columns = [r[1] for r in db.execute("PRAGMA table_info(task_steps)")]
    insert_step = f"INSERT INTO task_steps ({','.join(step_columns)}) VALUES ({','.join('?' * len(step_columns))})"
    step_batch: list[tuple[Any, ...]] = []
    rng = random.Random(7)
    seq = 0
    start = MONDAY_10 - DAYS * 86400
    step_s = DAYS * 86400 / rows
    batch: list[tuple[Any, ...]] = []
    task_batch: list[tuple[Any, ...]] = []
    copy_no = 0
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task(f"filling {rows:,} decisions", total=rows)
        while seq < rows:
            pick = rng.randrange(len(groups))
            task, group = tasks[pick], groups[pick]
            copy_no += 1
            agent = f"spiffe://example.org/agent/support-{copy_no % 1000}"
            new_task = f"tsk_b{copy_no}" if task else f"tsk_gone{copy_no}"
            ids = {row["id"]: f"dec_b{copy_no}_{i}" for i, row in enumerate(group)}
            if task:
                t = dict(task)
                t["id"], t["agent"] = new_task, agent
                t["created_at"] = start + seq * step_s
                t["expires_at"] = t["created_at"] + 900 + len(group) * step_s  # alive for all its decisions
                for h in t.pop("_steps"):  # the task's history, one row per step
                    h = {**h, "task_id": new_task, "decision_id": ids.get(h["decision_id"], h["decision_id"])}
                    step_batch.append(tuple(h[c] for c in step_columns))
                task_batch.append(tuple(t[c] for c in task_columns))
            for row in group:
                if seq >= rows:
                    break
                seq += 1
                r = dict(row)
                r["seq"], r["id"], r["agent"], r["task_id"] = seq, ids[row["id"]], agent, new_task
                r["at"] = start + seq * step_s
                for key in ("reasons", "masked", "timings_us"):
                    r[key] = json.loads(r[key])
                for key in ("arguments", "policy_input", "policy_result"):
                    r[key] = json.loads(r[key]) if r[key] is not None else None
                if r["policy_input"] is not None:
                    pinput = copy.deepcopy(r["policy_input"])
                    if isinstance(pinput.get("agent"), dict):
                        pinput["agent"]["id"] = agent
                    if isinstance(pinput.get("task"), dict):
                        pinput["task"]["id"] = new_task
                    r["policy_input"] = pinput
                r["token_jti"] = f"jti_b{seq}" if r["token_jti"] else None
                r["prev_hash"], r["hash_v"] = "", HASH_VERSION
                r["hash"] = entry_hash(r)
                for key in ("reasons", "masked", "timings_us", "arguments", "policy_input", "policy_result"):
                    r[key] = json.dumps(r[key]) if r[key] is not None else None
                batch.append(tuple(r[c] for c in columns))
            if len(batch) >= 20_000:
                db.executemany(insert, batch)
                db.executemany(insert_task, task_batch)
                db.executemany(insert_step, step_batch)
                db.commit()
                progress.advance(bar, len(batch))
                batch, task_batch, step_batch = [], [], []
        db.executemany(insert, batch)
        db.executemany(insert_task, task_batch)
        db.executemany(insert_step, step_batch)
        db.commit()
        progress.advance(bar, len(batch))
    db.execute("ANALYZE")
    db.close()


def fold(path: Path) -> None:
    """What a serving gateway's background round does after each seal (here in larger batches)."""
    store = Store.open(f"sqlite:///{path}", timeout=600.0)
    try:
        t0 = time.perf_counter()
        folded = asyncio.run(store.fold(now=MONDAY_10, batch=20_000))
        seconds = time.perf_counter() - t0
    finally:
        store.close()
    console.print(f"folded {folded:,} decisions into the roll-up and the text index in {seconds:.0f}s "
                  f"({folded / seconds:,.0f} decisions/s, {path.stat().st_size / 1e6:,.0f} MB)")


def pct(samples: list[float]) -> tuple[float, float]:
    s = sorted(samples)
    return statistics.median(s), s[min(len(s) - 1, int(len(s) * 0.95))]


async def measure(path: Path, samples: int, replay_n: int) -> None:
    config = load_config(None, data_dir=path.parent, intents_dir=ROOT / "intents", policy_dir=ROOT / "opa")
    config = config.model_copy(update={"store": config.store.model_copy(update={"url": f"sqlite:///{path}"})})
    registry = load_intents(config.intents_dir)
    service = ReviewService.open(config, lambda: registry, with_auth=False)
    rng = random.Random(11)
    newest = await service.store.last_seq()
    day = 86400.0
    # A full garbage collection walks every object of the loaded modules (about 0.1 s here), in
    # whichever query it falls: left out, so that the figures are the queries' own.
    gc.collect()
    gc.freeze()

    def when(ts: float) -> datetime:
        return datetime.fromtimestamp(ts, tz=UTC)

    queries = {
        "deny + intent": lambda: DecisionQuery(outcome="deny", intent="refund-order"),
        "deny + agent": lambda: DecisionQuery(outcome="deny", agent=f"spiffe://example.org/agent/support-"
                                                                     f"{rng.randrange(1000)}"),
        "deny + reason": lambda: DecisionQuery(outcome="deny", reason="binding_mismatch"),
        "deny + tool": lambda: DecisionQuery(outcome="deny", tool="payments.refund"),
        "deny + since (1 day)": lambda: DecisionQuery(
            outcome="deny", since=when(MONDAY_10 - rng.uniform(1, DAYS - 1) * day)),
        "deny + until (older pages)": lambda: DecisionQuery(
            outcome="deny", until=when(MONDAY_10 - rng.uniform(1, DAYS - 1) * day)),
        "hold + agent": lambda: DecisionQuery(outcome="hold", agent=f"spiffe://example.org/agent/support-"
                                                                     f"{rng.randrange(1000)}"),
        "deny + q in arguments": lambda: DecisionQuery(outcome="deny", q="ORD-9"),
        "q in arguments (any outcome)": lambda: DecisionQuery(q="ORD-9"),
        "deny + q of a task id": lambda: DecisionQuery(outcome="deny", q=f"tsk_b{rng.randrange(1, 200_000)}"),
        "deny + q matching nothing": lambda: DecisionQuery(outcome="deny", q=f"ORD-{rng.randrange(5000, 6000)}"),
        "q matching nothing (any outcome)": lambda: DecisionQuery(q=f"ORD-{rng.randrange(5000, 6000)}"),
        "q of frequent trigrams, no match": lambda: DecisionQuery(q=f"support-{rng.randrange(1000, 2000)}"),
    }
    table = Table(title=f"reviewer queries on {newest:,} decisions (SQLite), {samples} samples each")
    for col in ("query (50 per page)", "p50 ms", "p95 ms", "target p95", "rows"):
        table.add_column(col, justify="right" if col != "query (50 per page)" else "left")
    try:
        for name, make in queries.items():
            times, found, timeouts = [], 0, 0
            for _ in range(samples):
                q = make()
                t0 = time.perf_counter()
                try:
                    page = await service.search(q)
                except GatewayError:  # longer than the store's timeout allows: counted at what it took
                    timeouts += 1
                else:
                    found = len(page.items)
                times.append((time.perf_counter() - t0) * 1000)
            p50, p95 = pct(times)
            table.add_row(name, f"{p50:.1f}", f"{p95:.1f}", "≤ 100",
                          f"{found} ({timeouts} timed out)" if timeouts else str(found))
        times = []
        for _ in range(samples):
            seq = rng.randrange(1, newest + 1)
            page = await service.search(DecisionQuery(before=seq + 1, limit=1))
            t0 = time.perf_counter()
            detail = await service.detail(page.items[0].id)
            times.append((time.perf_counter() - t0) * 1000)
            assert detail is not None
        p50, p95 = pct(times)
        table.add_row("one decision page (detail)", f"{p50:.1f}", f"{p95:.1f}", "≤ 100", "1")
        console.print(table)
        await overview_figures(service, newest, max(samples // 4, 3), rng)

        engine = make_engine("embedded", policy_dir=config.policy_dir, intents_doc=registry.data_document())
        replayer = Replayer(service.store, registry, engine)

        async def first(n: int):
            taken = 0
            async for batch in service.store.decision_batches(batch=2000):
                yield batch[: n - taken]
                taken += len(batch)
                if taken >= n:
                    return

        report = await replayer.replay(first(replay_n))
        await engine.aclose()
        console.print(
            f"replay: {report.checked:,} decisions in {report.seconds:.1f}s = "
            f"[bold]{report.decisions_per_second:,.0f} decisions/s[/bold] "
            f"({report.unchanged:,} unchanged, {sum(report.transitions.values())} changed, "
            f"skipped {report.skipped})", highlight=False)
    finally:
        service.close()


async def overview_figures(service: ReviewService, newest: int, runs: int, rng: random.Random) -> None:
    """The overview page's store work for each relative range, ending at random points."""
    table = Table(title=f"reviewer overview on {newest:,} decisions (SQLite), {runs} runs each")
    for col in ("range", "buckets", "decisions in range", "p50 ms", "p95 ms"):
        table.add_column(col, justify="left" if col == "range" else "right")
    for name, seconds in RANGES.items():
        times, counted, buckets = [], 0, 0
        for _ in range(runs):
            end = MONDAY_10 if seconds >= DAYS * 86400 else MONDAY_10 - rng.uniform(0, DAYS * 86400 - seconds)
            service.clock = FrozenClock(end)
            t0 = time.perf_counter()
            ov = await service.overview(OverviewQuery(range=name))
            times.append((time.perf_counter() - t0) * 1000)
            counted, buckets = sum(ov.totals.values()), len(ov.buckets)
        p50, p95 = pct(times)
        table.add_row(f"last {name}", str(buckets), f"{counted:,}", f"{p50:.1f}", f"{p95:.1f}")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--replay", type=int, default=100_000)
    parser.add_argument("--db", type=Path, help="database file to fill (kept), or reuse when it exists")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="intentgate-bench-review-") as tmp:
        path = args.db or Path(tmp) / "review.db"
        if not path.exists():
            console.print("running the template stories through the real pipeline")
            templates = asyncio.run(stories(Path(tmp) / "templates"))
            t0 = time.perf_counter()
            fill(path, args.rows, templates)
            console.print(f"filled {args.rows:,} decisions in {time.perf_counter() - t0:.0f}s "
                          f"({path.stat().st_size / 1e6:,.0f} MB)")
            fold(path)
        asyncio.run(measure(path, args.samples, args.replay))


if __name__ == "__main__":
    main()
