"""Random decision logs for the read-side index's tests (``test_rollup``, ``test_migrations``),
and what the overview must say about them, counted from the records themselves."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from sqlalchemy import select

from intentgate.store import DecisionRecord, Store, rollup
from intentgate.store.ledger import append_decision
from intentgate.store.overview import FLAGGED, OUTCOMES, overview

__all__ = ["AGENTS", "DAY", "START", "append", "assert_overview", "fold", "random_records", "raw_overview",
           "rollup_rows"]

DAY = 86400
START = 1_799_020_800  # 2027-01-04T00:00:00Z: a day's edge
AGENTS = [f"spiffe://example.org/agent/a{k}" for k in range(6)] + ["spiffe://example.org/agent/Ünï"]
TOOLS = [None, "orders.get_order", "payments.refund", "t" * 256]
INTENTS = [None, "refund-order", "triage-ticket"]
REASONS = ["step_out_of_order:refund", "policy_denied", "binding_mismatch:order_id", "internal_error",
           "policy:" + "a long Rego reason " * 200, "policy:Ünïcode ünï"]
NOTES = ["", "Hello World", 'a "quote", 100% and snake_case/path', "ünïcödé", "ORD-12 twice ORD-12"]


def random_records(rng: random.Random, n: int, t0: float) -> list[DecisionRecord]:
    """Decisions at irregular times from ``t0`` (some on minute, hour and day edges, some up to
    200 s out of log order), of every outcome, with names missing, repeated reasons, long ones,
    and reviewer actions among them."""
    out, t = [], t0
    for i in range(n):
        t += rng.choice([0, 0.001, 0.5, 7, 60, 60, 61, 899.999, 3600, 3600.5, 20_000])
        at = t - rng.uniform(0, 200) if rng.random() < 0.15 else t
        if rng.random() < 0.1:
            at = float(round(at / 60) * 60)  # on a minute's edge
        kind = "review/approve" if rng.random() < 0.05 else rng.choice(["tools/call", "tools/call", "task/begin"])
        reasons = rng.sample(REASONS, rng.randrange(0, 3))
        if reasons and rng.random() < 0.2:
            reasons.append(reasons[0])  # counted once
        out.append(DecisionRecord(
            id=f"dec_r{i}_{rng.randrange(10**6)}", at=at, kind=kind, agent=rng.choice(AGENTS),
            intent=rng.choice(INTENTS), task_id=f"tsk_{rng.randrange(40)}", tool=rng.choice(TOOLS),
            outcome=rng.choice(OUTCOMES + ("allow", "deny")), reasons=reasons,
            arguments=rng.choice([None, {"order_id": f"ORD-{rng.randrange(30)}", "note": rng.choice(NOTES)}])))
    return out


def append(store: Store, records: list[DecisionRecord]) -> None:
    store.db.run_sync(lambda conn: [append_decision(conn, r) for r in records])


def fold(store: Store, *, now: float = START, horizon: float = 120.0, batch: int = rollup.BATCH) -> None:
    while store.db.run_sync(lambda conn: rollup.fold(conn, now=now, horizon=horizon, batch=batch)) == batch:
        pass


def raw_overview(records: list[DecisionRecord], edges: list[float]) -> tuple[list[dict[str, int]], dict[str, Any]]:
    """What the overview must say, counted from the records themselves."""
    buckets = [dict.fromkeys(OUTCOMES, 0) for _ in range(len(edges) - 1)]
    by: dict[str, Counter[tuple[str | None, str]]] = {k: Counter() for k in ("reason", "agent", "tool", "intent")}
    for r in records:
        if not edges[0] <= r.at < edges[-1]:
            continue
        i = next(k for k in range(len(edges) - 1) if edges[k] <= r.at < edges[k + 1])
        buckets[i][r.outcome] += 1
        if r.outcome in FLAGGED:
            for reason in set(r.reasons):
                by["reason"][reason, r.outcome] += 1
            for dim, name in (("agent", r.agent), ("tool", r.tool), ("intent", r.intent)):
                by[dim][name, r.outcome] += 1
    return buckets, by


def assert_overview(store: Store, records: list[DecisionRecord], edges: list[float]) -> None:
    got = store.db.run_sync(lambda conn: overview(conn, edges, top=10**6))
    buckets, by = raw_overview(records, edges)
    assert got.buckets == buckets, edges
    assert got.totals == {o: sum(b[o] for b in buckets) for o in OUTCOMES}
    if not any(got.totals[o] for o in FLAGGED):
        return
    for dim, tallies in (("reason", got.reasons), ("agent", got.agents), ("tool", got.tools),
                         ("intent", got.intents)):
        found = {(t.name, o): getattr(t, o) for t in tallies for o in FLAGGED if getattr(t, o)}
        assert found == dict(by[dim]), (dim, edges)
        assert got.distinct[dim + "s"] == len({name for name, _ in by[dim]})


def rollup_rows(store: Store) -> dict[tuple[int, str, int, str, str | None], int]:
    """``decision_rollup`` as {(width, dim, start, outcome, name): n}, checking that each name
    is numbered once, under its key."""
    r, names = rollup.rollup_t.c, rollup.names_t.c

    def read(conn: Any) -> tuple[list[Any], list[Any]]:
        return (conn.execute(select(r.width, r.dim, r.start, r.outcome, r.name_id, r.n)).all(),
                conn.execute(select(names.id, names.key, names.name)).all())

    rows, numbered = store.db.run_sync(read)
    assert all(key == rollup.name_key(name) for _, key, name in numbered)
    assert len({key for _, key, _ in numbered}) == len(numbered)
    name_of = {id_: name for id_, _, name in numbered}
    assert all((name_id == 0) == (dim == "outcome") for _, dim, _, _, name_id, _ in rows)
    return {(w, dim, s, o, name_of.get(name_id)): n for w, dim, s, o, name_id, n in rows}
