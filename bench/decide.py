"""Decision-core benchmark: latency of ``decide`` (allow and deny, durable write included).

Prints, side by side in one run:
- p50/p99 of ``Decider.decide`` for allowed and for denied calls, on SQLite (WAL), with
  10 and with 10,000 intents loaded (ratio printed: the target is ≤ 1.2×);
- the embedded Rego evaluation alone, the token mint alone, and a raw SQLite insert+commit,
  as baselines for what the pipeline adds.

Usage: ``python bench/decide.py [--calls 2000] [--intents 10,10000]``
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.config import load_config  # noqa: E402
from gateway.decide import CallRequest  # noqa: E402
from gateway.identity import AgentIdentity  # noqa: E402
from gateway.runtime import Runtime  # noqa: E402

AGENT = AgentIdentity(id="spiffe://example.org/agent/support-1")
PARAMS = {"ticket_id": "TCK-1", "order_id": "ORD-7"}


def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    ms = sorted(s / 1e6 for s in samples_ns)
    p50 = statistics.median(ms)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return p50, p99


def write_intents(directory: Path, count: int) -> None:
    """The project's intents plus synthetic copies of refund-order, ``count`` in all."""
    directory.mkdir(parents=True)
    base = yaml.safe_load((ROOT / "intents" / "refund-order.yaml").read_text())
    for src in (ROOT / "intents").glob("*.yaml"):
        (directory / src.name).write_text(src.read_text())
    for i in range(count - 3):
        doc = dict(base, name=f"refund-order-{i:05d}", agents=[f"spiffe://example.org/agent/team{i}-*"])
        (directory / f"refund-order-{i:05d}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


async def measure(n_intents: int, calls: int, work: Path) -> dict[str, object]:
    intents_dir = work / f"intents-{n_intents}"
    write_intents(intents_dir, n_intents)
    t0 = time.perf_counter()
    config = load_config(None, data_dir=work / f"var-{n_intents}", intents_dir=intents_dir, policy_dir=ROOT / "opa",
                         front={"rate_limit_per_second": None})  # the pipeline, not the limiter
    rt = await Runtime.open(config)
    load_s = time.perf_counter() - t0
    try:
        d = rt.decider
        # warm up
        for _ in range(50):
            t = await d.begin_task(AGENT, "refund-order", PARAMS, "bench")
            await d.decide(CallRequest(agent=AGENT, task_id=t.task_id, step="read_ticket", upstream="tickets",
                                       tool="get_ticket", untrusted_arguments={"ticket_id": "TCK-1"}))
        allow: list[int] = []
        tasks = [(await d.begin_task(AGENT, "refund-order", PARAMS, "bench")).task_id for _ in range(calls)]
        for task_id in tasks:
            req = CallRequest(agent=AGENT, task_id=task_id, step="read_ticket", upstream="tickets",
                              tool="get_ticket", untrusted_arguments={"ticket_id": "TCK-1"})
            s = time.perf_counter_ns()
            v = await d.decide(req)
            allow.append(time.perf_counter_ns() - s)
            assert v.outcome == "allow", v
        deny: list[int] = []
        req = CallRequest(agent=AGENT, task_id=tasks[0], step="refund", upstream="payments", tool="refund",
                          untrusted_arguments={"order_id": "ORD-7", "amount": 5, "currency": "EUR"})
        for _ in range(calls):
            s = time.perf_counter_ns()
            v = await d.decide(req)
            deny.append(time.perf_counter_ns() - s)
            assert v.outcome == "deny", v
        # policy alone, on a recorded input
        stored = await rt.store.get_decision(v.decision_id)
        pinput = stored.policy_input
        pol: list[int] = []
        for _ in range(calls):
            s = time.perf_counter_ns()
            await rt.policy.evaluate(pinput)
            pol.append(time.perf_counter_ns() - s)
        mint: list[int] = []
        for _ in range(calls):
            s = time.perf_counter_ns()
            rt.issuer.mint(agent=AGENT.id, task_id="tsk_x", intent="refund-order", step="lookup", upstream="orders",
                           tool="orders.get_order", arguments_sha256="0" * 64, task_expires_at=time.time() + 600)
            mint.append(time.perf_counter_ns() - s)
        return {"load_s": load_s, "allow": allow, "deny": deny, "policy": pol, "mint": mint}
    finally:
        await rt.aclose()


def raw_sqlite(calls: int, work: Path) -> list[int]:
    conn = sqlite3.connect(work / "raw.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    out = []
    for i in range(calls):
        s = time.perf_counter_ns()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (v) VALUES (?)", (f"row {i}",))
        conn.execute("COMMIT")
        out.append(time.perf_counter_ns() - s)
    conn.close()
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--intents", default="10,10000", help="comma-separated intent counts")
    args = ap.parse_args()
    counts = [int(x) for x in args.intents.split(",")]
    console = Console(width=120)
    with tempfile.TemporaryDirectory(prefix="intentgate-bench-") as tmp:
        work = Path(tmp)
        results = {}
        for n in counts:
            console.print(f"measuring with {n} intents ({args.calls} calls each)...")
            results[n] = await measure(n, args.calls, work)
        raw = raw_sqlite(args.calls, work)

    table = Table(title=f"decide() latency, SQLite WAL, {args.calls} calls each (ms)")
    table.add_column("what")
    for n in counts:
        table.add_column(f"{n} intents p50", justify="right")
        table.add_column(f"{n} intents p99", justify="right")
    for key, label in [
        ("allow", "decide: allow (token minted, durable write)"),
        ("deny", "decide: deny (durable write)"),
        ("policy", "policy eval alone (embedded Rego)"),
        ("mint", "token mint alone (EdDSA)"),
    ]:
        row = [label]
        for n in counts:
            p50, p99 = percentiles(results[n][key])  # type: ignore[arg-type]
            row += [f"{p50:.3f}", f"{p99:.3f}"]
        table.add_row(*row)
    p50, p99 = percentiles(raw)
    table.add_row("baseline: raw sqlite3 insert+commit", *([f"{p50:.3f}", f"{p99:.3f}"] * len(counts)))
    console.print(table)
    for n in counts:
        console.print(f"startup with {n} intents (load + compile): {results[n]['load_s']:.2f} s")
    if len(counts) >= 2:
        lo, hi = counts[0], counts[-1]
        for key in ("allow", "deny"):
            r = percentiles(results[hi][key])[0] / percentiles(results[lo][key])[0]  # type: ignore[arg-type]
            console.print(f"{key} p50 ratio {hi} vs {lo} intents: {r:.2f}x (target <= 1.2x)")


if __name__ == "__main__":
    asyncio.run(main())
