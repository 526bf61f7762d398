"""The read-side index on SQLite and PostgreSQL: the overview from the roll-up (with the tail
not folded yet, late commits, ranges of every shape) against a count over the raw rows, and
the search through the text index against the search without it, on random decisions."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, insert, text

from intentgate.review.overview import RANGES, OverviewQuery, resolve
from intentgate.store import DecisionRecord, Store, queries, rollup
from intentgate.store.overview import cover
from intentgate.store.queries import DecisionFilter, decisions_t, search_decisions
from intentgate.store.records import HASH_VERSION, entry_hash
from tests.randomlog import AGENTS, DAY, START, append, assert_overview, fold, random_records, rollup_rows


def ranges(rng: random.Random, first: float, last: float, k: int) -> list[list[float]]:
    """Bucket edges as the overview makes them: random ranges, ranges ending on decisions and
    on day edges, the relative ones ending at random times, and one shorter than a minute."""
    out = []
    for _ in range(k):
        a, b = sorted(rng.uniform(first - 3600, last + 3600) for _ in range(2))
        out.append(resolve(OverviewQuery(since=datetime.fromtimestamp(a, UTC), until=datetime.fromtimestamp(b, UTC)),
                           b)[3])
    for name in RANGES:
        out.append(resolve(OverviewQuery(range=name), rng.uniform(first, last + DAY))[3])
    out.append(resolve(OverviewQuery(since=datetime.fromtimestamp(START, UTC),
                                     until=datetime.fromtimestamp(START + 3 * DAY, UTC)), 0)[3])
    out.append([first + 10.5, first + 40.25])
    return out


def test_cover_splits_a_range_into_whole_buckets_and_short_ends() -> None:
    runs, rest = cover(START - 90.5, START + DAY + 3600 + 150, rollup.WIDTHS)
    assert sorted(runs) == [(60, START - 60, START), (60, START + DAY + 3600, START + DAY + 3600 + 120),
                            (3600, START + DAY, START + DAY + 3600), (86400, START, START + DAY)]
    assert rest == [(START - 90.5, START - 60), (START + DAY + 3600 + 120, START + DAY + 3600 + 150)]
    assert cover(START + 1, START + 59, rollup.WIDTHS) == ([], [(START + 1, START + 59)])
    assert rollup.bucket(START - 1e-6, 60) == START - 60 and rollup.bucket(START, 86400) == START


def test_overview_from_the_rollup_is_the_raw_count(db_url: str) -> None:
    """Folded in small batches, then with a tail not folded yet, then all folded: every range's
    buckets, totals and top lists are what counting the rows themselves gives."""
    rng = random.Random(17)
    store = Store.open(db_url, timeout=30.0, pool_size=2)
    try:
        records = random_records(rng, 400, START - 3600)
        append(store, records[:300])
        fold(store, batch=37)
        append(store, records[300:])  # the tail: not folded yet
        last = max(r.at for r in records)
        for edges in ranges(rng, START - 3600, last, 12):
            assert_overview(store, records, edges)
        fold(store)
        assert store.db.run_sync(rollup.folded_state).seq == max(r.seq for r in records)
        for edges in ranges(rng, START - 3600, last, 12):
            assert_overview(store, records, edges)
        # ranges ending exactly on decisions: since takes the decision at it, until leaves it out
        for r in rng.sample(records, 5):
            assert_overview(store, records, [r.at, r.at + 3600 * 7])
            assert_overview(store, records, [r.at - DAY, r.at])
    finally:
        store.close()


@pytest.mark.postgres
def test_a_decision_that_commits_behind_the_watermark_is_counted_once(pg_schema_url: str) -> None:
    """PostgreSQL numbers a decision before it commits: a seq the round found missing is a
    hole, read with the tail and folded when it appears, and forgotten after the horizon."""
    rng = random.Random(3)
    store = Store.open(pg_schema_url, timeout=30.0, pool_size=2)
    try:
        records = random_records(rng, 60, START)
        append(store, records[:20])
        late = records[20:23]
        store.db.run_sync(lambda conn: conn.execute(  # three seqs taken by transactions still open
            text("SELECT setval(pg_get_serial_sequence('decisions', 'seq'), 23)")))
        append(store, records[23:40])
        fold(store, now=START)
        state = store.db.run_sync(rollup.folded_state)
        assert state.seq == records[39].seq and state.holes == ((21, 23),)
        edges = [START - DAY, START + 30 * DAY]
        assert_overview(store, records[:20] + records[23:40], edges)
        for seq, r in zip((21, 22, 23), late, strict=True):  # they commit now
            row = r.model_dump(exclude={"seq", "prev_hash", "hash", "hash_v"})
            row.update(seq=seq, prev_hash="", hash_v=HASH_VERSION)
            row["hash"] = entry_hash(row)
            store.db.run_sync(lambda conn, row=row: conn.execute(insert(decisions_t).values(**row)))
            r.seq = seq
        assert_overview(store, records[:40], edges)  # read from the hole before it is folded
        fold(store, now=START + 1)
        assert store.db.run_sync(rollup.folded_state).holes == ()
        assert_overview(store, records[:40], edges)
        store.db.run_sync(lambda conn: conn.execute(text("SELECT setval(pg_get_serial_sequence('decisions', 'seq'), "
                                                         f"{records[39].seq + 5})")))
        append(store, records[40:])
        fold(store, now=START + 2)
        assert store.db.run_sync(rollup.folded_state).holes != ()
        fold(store, now=START + 200)  # never committed: forgotten after the horizon
        assert store.db.run_sync(rollup.folded_state).holes == ()
        assert_overview(store, records, edges)
        # one round at a time: a replica that finds the state row held leaves the round alone
        eng = create_engine(pg_schema_url)
        with eng.begin() as other:
            other.execute(text("SELECT 1 FROM decision_rollup_state WHERE id = 1 FOR UPDATE"))
            assert store.db.run_sync(lambda conn: rollup.fold(conn, now=START, horizon=120)) is None
        eng.dispose()
    finally:
        store.close()


def _terms(rng: random.Random, records: list[DecisionRecord]) -> list[str]:
    """Substrings of what was recorded, in other cases, terms found nowhere, short ones, and
    the characters LIKE, FTS5 queries and JSON give a meaning to."""
    terms = ["ORD-12", "ord-1", "hello world", "HELLO", "100% and", "snake_case", "case/path", '"quote"', '"order_id"',
             "ünï", "ÜNÏ", "Ünï", "\\u00fc", "nothing-like-this", "ORD-99999", "zz", "a", "%", "_", "/", '"', "'",
             "tsk_1", "dec_r1", "refund", "Long Rego", "policy_denied", "_id\": \"ORD", "t" * 200, "a0", "  "]
    for r in rng.sample(records, 25):
        field = rng.choice([r.id, r.agent, r.tool or "x", r.intent or "y", r.task_id or "z",
                            json.dumps(r.reasons), json.dumps(r.arguments)])
        i = rng.randrange(len(field))
        term = field[i:i + rng.randrange(1, 12)]
        terms.append(term.swapcase() if rng.random() < 0.3 else term)
    return terms


@pytest.mark.parametrize("dense", [False, True], ids=["index", "dense-fallback"])
def test_search_through_the_text_index_finds_what_it_finds_without(db_url: str, dense: bool,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    if dense:  # a term counts as frequent after a few candidates: the walk takes over
        monkeypatch.setattr(queries, "_CHUNK", 2)
        monkeypatch.setattr(queries, "_DENSE", 6)
    rng = random.Random(23)
    store = Store.open(db_url, timeout=30.0, pool_size=2)
    try:
        records = random_records(rng, 300, START)
        append(store, records[:260])
        fold(store, batch=50)
        append(store, records[260:])  # not indexed yet
        assert store.db.run_sync(rollup.folded_state).text_index
        seqs = sorted(r.seq for r in records)

        def both(f: DecisionFilter) -> tuple[list[str], list[str]]:
            def run(conn: Any) -> tuple[list[str], list[str]]:
                with_index = [r.id for r in search_decisions(conn, f)]
                without = [r.id for r in queries._walk(conn, f, queries._conditions(conn, f)[0], f.before_seq)]
                return with_index, without

            return store.db.run_sync(run)

        matched = 0
        for term in _terms(rng, records):
            for _ in range(3):
                f = DecisionFilter(
                    q=term, limit=rng.choice([3, 20, 500]), full=rng.random() < 0.2,
                    outcome=rng.choice([None, None, "deny", "allow"]), agent=rng.choice([None, None, AGENTS[0]]),
                    reason=rng.choice([None, None, "policy"]),
                    since=rng.choice([None, records[100].at]), until=rng.choice([None, records[250].at]),
                    before_seq=rng.choice([None, None, rng.choice(seqs)]))
                got, want = both(f)
                assert got == want, (term, f)
                matched += bool(want)
        assert matched > 40  # most terms were found somewhere
    finally:
        store.close()


async def test_arguments_kept_out_of_the_log_are_kept_out_of_the_index(tmp_path: Path) -> None:
    """``audit.arguments: false``: what the log does not hold, the text index does not either."""
    from intentgate.clock import FrozenClock
    from intentgate.config import load_config
    from intentgate.decide import CallRequest
    from intentgate.identity import AgentIdentity
    from intentgate.runtime import Runtime
    from tests.conftest import INTENTS_DIR, POLICY_DIR
    from tests.tasks import ISSUER

    config = load_config(None, data_dir=tmp_path, intents_dir=INTENTS_DIR, policy_dir=POLICY_DIR,
                         audit={"arguments": False})
    rt = await Runtime.open(config, clock=FrozenClock(START + 10 * 3600))
    agent = AgentIdentity(id="spiffe://example.org/agent/support-1")
    try:
        started = await rt.decider.begin_task(agent, "refund-order", {"ticket_id": "TCK-4711", "order_id": "ORD-7"},
                                              "customer asked", issuer=ISSUER)
        for ticket in ("TCK-4711", "TCK-SECRET-99"):  # allowed, then denied (a binding mismatch)
            await rt.decider.decide(CallRequest(agent=agent, task_id=started.task_id, step="read_ticket",
                                                upstream="tickets", tool="get_ticket",
                                                untrusted_arguments={"ticket_id": ticket}))
    finally:
        await rt.aclose()  # seals, and folds into the roll-up and the text index
    store = Store.open(config.database_url)
    try:
        assert store.db.run_sync(rollup.folded_state).seq == 3
        for term in ("TCK-4711", "SECRET-99"):
            assert await store.search_decisions(DecisionFilter(q=term)) == ([], None)
            assert store.db.run_sync(lambda conn, t=term: conn.execute(
                text("SELECT count(*) FROM decision_text WHERE decision_text MATCH :q"), {"q": f'"{t}"'}).scalar()) == 0
        found, _ = await store.search_decisions(DecisionFilter(q="tickets.get_ticket"))
        assert len(found) == 2 and all(d.arguments is None for d in found)  # the rest is indexed
    finally:
        store.close()


def test_the_rollup_holds_what_the_round_folded(db_url: str) -> None:
    """The counts table itself: every (width, dimension, bucket, outcome, name) once, with the
    count of the decisions in it; each name numbered once (a long reason, no intent)."""
    rng = random.Random(5)
    store = Store.open(db_url, timeout=30.0, pool_size=2)
    try:
        records = random_records(rng, 150, START)
        append(store, records)
        fold(store, batch=40)
        assert rollup_rows(store) == dict(
            rollup.tally((r.at, r.outcome, r.agent, r.tool, r.intent, json.dumps(r.reasons)) for r in records))
    finally:
        store.close()
