"""The reviewer overview page and the inbox's relative ranges, argument search, friendly errors
and NDJSON export, on the real app over SQLite and PostgreSQL, with decisions made by the real
pipeline (the fill of test_review_api, plus runs of decisions at known times)."""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections import Counter
from datetime import UTC, datetime
from html import unescape
from typing import Any

from intentgate.clock import FrozenClock
from intentgate.identity import AgentIdentity
from intentgate.review import DecisionQuery
from intentgate.review.overview import OverviewQuery
from intentgate.runtime import Runtime
from tests.tasks import ISSUER
from tests.test_review_api import HOUR, MONDAY_10, OTHER, REFUND, SUPPORT, Env, _call, env  # noqa: F401
from tests.test_ui import decision_ids, login

# the fill: task A's five allows at 10:00, the rest at 11:00 (2027-01-04, UTC)
RANGE = {"since": "2027-01-04T09:00:00", "until": "2027-01-04T12:00:00"}


def page(env: Env, path: str = "/ui/overview", status: int = 200, **params: str) -> str:
    r = env.client.get(path, params=params or None)  # (params={} would drop the query of a link)
    assert r.status_code == status, r.text[-2000:]
    return r.text


def totals(html: str) -> dict[str, int]:
    return {o: int(n) for o, n in re.findall(r'data-outcome="(\w+)"><span class="n">(\d+)</span>', html)}


def top(html: str, table: str) -> dict[str, dict[str, int]]:
    """A top list as {name: {outcome: count, "total": n}} ("" for entries without a name)."""
    section = re.search(rf'<section class="card top" id="top-{table}">(.*?)</section>', html, re.S).group(1)
    out = {}
    for name, row in re.findall(r'<tr data-name="([^"]*)">(.*?)</tr>', section, re.S):
        counts = {o: int(n) for o, n in re.findall(r'data-outcome="(\w+)">(?:<a href="[^"]*">)?(\d+)', row)}
        counts["total"] = int(re.search(r'class="num total">(\d+)', row).group(1))
        out[unescape(name)] = counts
    return out


def buckets(html: str) -> list[tuple[str, str, dict[str, int]]]:
    body = re.search(r'<table class="list buckets">(.*?)</table>', html, re.S).group(1)
    rows = []
    for start, end, cells in re.findall(r'<tr><td class="nowrap">([^<]+)</td><td class="nowrap">([^<]+)</td>(.*?)</tr>',
                                        body, re.S):
        rows.append((start, end, {o: int(n) for o, n in re.findall(r'data-outcome="(\w+)">(\d+)', cells)}))
    return rows


def links(html: str) -> list[str]:
    return [unescape(h) for h in re.findall(r'href="(/ui/decisions\?[^"]+)"', html)]


def rest_records(env: Env, **params: str) -> list[dict[str, Any]]:
    r = env.get("/v1/decisions", limit=500, **params)
    assert r.status_code == 200, r.text
    return r.json()["items"]


# ----- counts, top lists, links ------------------------------------------------------------
def test_overview_counts_top_lists_and_links(env: Env) -> None:
    login(env)
    html = page(env, **RANGE)
    assert totals(html) == {"deny": 6, "hold": 1, "allow": 11}  # no shadow row without shadow decisions
    assert "pending approvals" in html and 'href="/ui/approvals"' in html

    tools = top(html, "tools")
    assert tools["payments.refund"] == {"deny": 4, "hold": 1, "total": 5}  # skip, binding, other agent, over limit
    assert tools["email.send"] == {"deny": 1, "hold": 0, "total": 1}
    assert tools["tickets.get_ticket"] == {"deny": 1, "hold": 0, "total": 1}  # the unknown task
    assert list(tools)[0] == "payments.refund"  # largest first
    agents = top(html, "agents")
    assert agents == {SUPPORT.id: {"deny": 5, "hold": 1, "total": 6}, OTHER.id: {"deny": 1, "hold": 0, "total": 1}}

    # reasons and intents: what the decision search says the same decisions were
    flagged = rest_records(env, outcome="deny", **RANGE) + rest_records(env, outcome="hold", **RANGE)
    assert len(flagged) == 7
    reasons: Counter[tuple[str, str]] = Counter()
    intents: Counter[tuple[str, str]] = Counter()
    for d in flagged:
        for r in set(d["reasons"]):
            reasons[r, d["outcome"]] += 1
        intents[d["intent"] or "", d["outcome"]] += 1
    for name, got in (("reasons", top(html, "reasons")), ("intents", top(html, "intents"))):
        want = reasons if name == "reasons" else intents
        assert {(n, o): c for n, row in got.items() for o, c in row.items() if o != "total" and c} == dict(want)
    assert top(html, "reasons")["step_out_of_order:refund"]["deny"] == 1
    assert "The step is not reachable" in html  # a reason in plain words

    # every number links to the inbox, filtered to what it counts
    found = links(html)
    assert "/ui/decisions?outcome=deny&since=2027-01-04T09%3A00%3A00&until=2027-01-04T12%3A00%3A00" in found
    tool_link = next(h for h in found if "tool=payments.refund" in h and "outcome=hold" in h)
    assert decision_ids(page(env, tool_link)) == [env.filled["b_hold"]]
    agent_link = next(h for h in found if "agent=spiffe%3A%2F%2Fexample.org%2Fagent%2Fsupport-2" in h
                      and "outcome=deny" in h)
    assert decision_ids(page(env, agent_link)) == [env.filled["other_agent"]]
    # the 11:00 bucket's bar links to that bucket's denials
    bar = next(h for h in found if "outcome=deny" in h and "since=2027-01-04T11%3A00%3A00" in h)
    assert set(decision_ids(page(env, bar))) == {env.filled[n] for n in (
        "b_skip", "b_wrong_tool", "b_binding", "unknown_task", "other_agent", "c_over_limit")}


def test_overview_time_range_narrows_everything(env: Env) -> None:
    login(env)
    before = page(env, since="2027-01-04T09:00:00", until="2027-01-04T11:00:00")  # until is exclusive
    assert totals(before) == {"deny": 0, "hold": 0, "allow": 5}
    assert before.count("Nothing denied or held.") == 4  # all four top lists
    after = page(env, since="2027-01-04T11:00:00", until="2027-01-04T11:00:01")  # since is inclusive
    assert totals(after) == {"deny": 6, "hold": 1, "allow": 6}
    assert top(after, "agents")[SUPPORT.id]["total"] == 6
    empty = page(env, since="2027-01-05T00:00:00", until="2027-01-06T00:00:00")
    assert totals(empty) == {"deny": 0, "hold": 0, "allow": 0}

    # buckets: 3 hours in 5-minute buckets, edges on whole multiples of 5 minutes
    rows = buckets(page(env, **RANGE))
    assert len(rows) == 36 and rows[0][0] == "2027-01-04 09:00:00Z" and rows[-1][1] == "2027-01-04 12:00:00Z"
    nonzero = {start: counts for start, _, counts in rows if any(counts.values())}
    assert nonzero == {
        "2027-01-04 10:00:00Z": {"deny": 0, "hold": 0, "would_deny": 0, "allow": 5},
        "2027-01-04 11:00:00Z": {"deny": 6, "hold": 1, "would_deny": 0, "allow": 6},
    }
    # an unaligned range keeps its own ends: a partial first and last bucket
    rows = buckets(page(env, since="2027-01-04T10:02:30", until="2027-01-04T11:30:00"))
    assert rows[0][:2] == ("2027-01-04 10:02:30Z", "2027-01-04 10:05:00Z")
    assert sum(c["allow"] for *_, c in rows) == 6 and sum(c["deny"] for *_, c in rows) == 6


def _decide_at_known_times(env: Env, start: float, n: int,
                           gaps: tuple[int, ...] = (1, 7, 30, 90, 600, 1800)) -> list[tuple[float, str]]:
    """``n`` decisions through the real pipeline at irregular, increasing times from ``start``:
    task begins (allow) and calls on an unknown task (deny), by three agents."""
    rng = random.Random(5)
    agents = [AgentIdentity(id=f"spiffe://example.org/agent/support-{k}") for k in (1, 3, 4)]
    clock = FrozenClock(start)

    async def run() -> list[tuple[float, str]]:
        rt = await Runtime.open(env.config, clock=clock)
        made = []
        try:
            for i in range(n):
                clock.advance(rng.choice(gaps))
                agent = agents[i % 3]
                if i % 4 == 0:
                    await rt.decider.begin_task(agent, "refund-order", REFUND, f"run {i}", issuer=ISSUER)
                    made.append((clock.now(), "allow"))
                else:
                    v = await rt.decider.decide(_call("tsk_gone", "read_ticket", "tickets.get_ticket",
                                                      {"ticket_id": "TCK-1"}, agent=agent))
                    made.append((clock.now(), v.outcome))
        finally:
            await rt.aclose()
        return made

    return asyncio.run(run())


def test_overview_buckets_match_the_decision_times(env: Env) -> None:
    """Enough decisions for the edge search to probe (not only read brackets in full): every
    bucket of several ranges holds exactly the decisions whose times fall in it."""
    start = datetime(2027, 2, 1, tzinfo=UTC).timestamp()
    made = _decide_at_known_times(env, start, 240)
    assert made[-1][0] - start > 86400 and Counter(o for _, o in made) == {"allow": 60, "deny": 180}
    service = env.client.app.state.review
    rng = random.Random(9)
    ends = [made[-1][0] + 1]
    for _ in range(6):
        a, b = sorted(rng.uniform(start - 3600, made[-1][0] + 3600) for _ in range(2))
        ends.append(b)
        ov = asyncio.run(service.overview(OverviewQuery(since=datetime.fromtimestamp(a, UTC),
                                                        until=datetime.fromtimestamp(b, UTC))))
        for bucket in ov.buckets:
            lo, hi = bucket.start.timestamp(), bucket.end.timestamp()
            want = Counter(o for t, o in made if lo <= t < hi)
            assert (bucket.allow, bucket.deny, bucket.hold) == (want["allow"], want["deny"], 0), (bucket, want)
        inside = [(t, o) for t, o in made if a <= t < b]
        assert ov.totals["deny"] == sum(o == "deny" for _, o in inside)
        assert sum(t.total for t in ov.tools) == ov.totals["deny"]  # every denial was a tickets.get_ticket call
    # the whole run, edges exactly on decisions: since takes the decision at it, until leaves it out
    t0, t1 = made[10][0], made[200][0]
    ov = asyncio.run(service.overview(OverviewQuery(since=datetime.fromtimestamp(t0, UTC),
                                                    until=datetime.fromtimestamp(t1, UTC))))
    assert sum(ov.totals.values()) == sum(1 for t, _ in made if t0 <= t < t1)


# ----- relative ranges -----------------------------------------------------------------------
def test_relative_ranges_end_now(env: Env) -> None:
    """"Last 1h" at 11:10 holds the fill's 11:00 decisions, not its 10:00 ones; the default is
    the last 24h (the review service's clock is the app's; here a frozen one)."""
    login(env)
    env.client.app.state.review.clock = FrozenClock(MONDAY_10 + HOUR + 600)
    last_hour = page(env, range="1h")
    assert totals(last_hour) == {"deny": 6, "hold": 1, "allow": 6} and "(last 1h)" in last_hour
    assert "2027-01-04 10:10:00Z – 2027-01-04 11:10:00Z" in unescape(last_hour)
    day = page(env)
    assert totals(day) == {"deny": 6, "hold": 1, "allow": 11} and "(last 24h)" in day
    assert top(day, "agents") == top(page(env, **RANGE), "agents")
    # a given since wins over the relative range
    assert totals(page(env, range="1h", since="2027-01-04T09:00:00")) == totals(day)
    # the inbox's "last" choice: since = that long ago
    recent = decision_ids(page(env, "/ui/decisions", last="1h", outcome="any"))
    assert set(recent) == {i for n, i in env.filled.ids.items() if not n.startswith("a_")}
    assert '<option value="1h" selected>' in page(env, "/ui/decisions", last="1h")
    # auto-refresh is a <meta> refresh (no script)
    assert '<meta http-equiv="refresh" content="60">' in page(env, range="1h", refresh="60")
    assert 'http-equiv="refresh"' not in page(env, range="1h", refresh="7")  # not a choice: off


# ----- what waits for a reviewer -------------------------------------------------------------
def test_overview_shows_pending_approvals_and_grants(env: Env) -> None:
    csrf = login(env)
    html = page(env, **RANGE)
    waiting = re.search(r'id="waiting-approvals">(.*?)</section>', html, re.S).group(1)
    assert f'href="/ui/decisions/{env.filled["b_hold"]}"' in waiting and "payments.refund" in waiting
    assert re.search(r'<span class="n">1</span> pending approvals', html)
    assert re.search(r'<span class="n">0</span> active grants', html) and "No grant is active." in html

    r = env.client.post("/ui/grants", data={"csrf": csrf, "agent": SUPPORT.id, "tool": "payments.refund",
                                            "intent": "", "reason": "incident INC-9", "minutes": "15"})
    assert r.status_code == 201
    grant = re.search(r"Granted (grt_[A-Za-z0-9_-]+)", r.text).group(1)
    html = page(env, **RANGE)
    assert re.search(r'<span class="n">1</span> active grants', html)
    assert re.search(r'<span class="n">1</span> grants to sign off', html)
    assert grant in re.search(r'id="waiting-grants">(.*?)</section>', html, re.S).group(1)
    assert 'href="/ui/grants?needs_review=true"' in html and 'href="/ui/grants?active=true"' in html

    assert env.client.post(f"/ui/grants/{grant}/sign-off", data={"csrf": csrf}).status_code == 200
    assert re.search(r'<span class="n">0</span> grants to sign off', page(env, **RANGE))
    approval = re.search(r'action="/ui/approvals/(apr_[A-Za-z0-9_-]+)/approve"', page(env, "/ui/approvals")).group(1)
    assert env.client.post(f"/ui/approvals/{approval}/reject", data={"csrf": csrf}).status_code == 200
    html = page(env, **RANGE)
    assert re.search(r'<span class="n">0</span> pending approvals', html) and "Nothing is waiting" in html


def test_pending_approvals_mean_the_same_on_the_overview_and_the_gauge(env: Env) -> None:
    """A pending approval counts while a reviewer can still approve it (pending, not expired):
    on the overview (its count and its list) as in ``intentgate_approvals_pending``."""
    from intentgate.store.queries import review_backlog

    login(env)
    service = env.client.app.state.review
    [held] = asyncio.run(service.store.list_approvals(status="pending"))
    for now, want in ((held.expires_at - 1, 1), (held.expires_at, 0), (held.expires_at + 86400, 0)):
        service.clock = FrozenClock(now)
        ov = asyncio.run(service.overview(OverviewQuery(range="1h")))
        gauge = service.store.db.run_sync(lambda conn, now=now: review_backlog(conn, now))
        assert ov.backlog.pending_approvals == len(ov.pending_approvals) == gauge.pending_approvals == want
        html = page(env, range="1h")
        assert re.search(rf'<span class="n">{want}</span> pending approvals', html)
        assert (env.filled["b_hold"] in re.search(r'id="waiting-approvals">(.*?)</section>', html, re.S).group(1)) \
            is bool(want)


# ----- errors, CSP ----------------------------------------------------------------------------
def test_bad_ranges_are_explained_in_words(env: Env) -> None:
    login(env)

    def alerts(html: str) -> list[str]:
        return [unescape(a) for a in re.findall(r'role="alert">([^<]*)', html)]

    [message] = alerts(page(env, status=422, since="yesterday"))
    assert message.startswith("From: “yesterday” is not a date and time: use e.g. 2027-01-04T10:30")
    assert alerts(page(env, status=422, since="2027-01-04T12:00", until="2027-01-04T11:00")) == [
        "Until must be later than since"]
    [message] = alerts(page(env, status=422, range="2h"))
    assert message.startswith("Last: “2h” is not one of")
    # the inbox says the same, and keeps what was typed
    html = page(env, "/ui/decisions", status=422, until="2027-13-01")
    assert alerts(html)[0].startswith("Until: “2027-13-01” is not a date and time")
    assert 'value="2027-13-01"' in html and "Input should be" not in html
    assert alerts(page(env, "/ui/decisions", status=422, last="2h"))[0].startswith("Last: “2h” is not one of")


def test_overview_keeps_to_the_pages_csp(env: Env) -> None:
    login(env)
    r = env.client.get("/ui/overview", params=RANGE)
    inbox = env.client.get("/ui/decisions")
    assert r.headers["content-security-policy"] == inbox.headers["content-security-policy"]
    assert "default-src 'none'" in r.headers["content-security-policy"]
    html = r.text
    assert "<svg" in html and "<rect" in html
    assert "style=" not in html and "<script" not in html and "<style" not in html  # style-src 'self' only
    assert not re.search(r'(?:src|href)="(?:https?:)?//', html)  # nothing from elsewhere
    assert 'href="/ui/overview" aria-current="page"' in html
    assert 'href="/ui/overview"' in inbox.text  # in the nav of every page


# ----- the inbox: arguments, export ------------------------------------------------------------
def test_inbox_search_looks_inside_arguments(env: Env) -> None:
    login(env)
    assert decision_ids(page(env, "/ui/decisions", q="ORD-8", outcome="any")) == [env.filled["b_binding"]]
    assert decision_ids(page(env, "/ui/decisions", q='"amount": 1800', outcome="any")) == [env.filled["b_hold"]]
    assert env.ids(q="ord-8") == [env.filled["b_binding"]]  # the REST API too, case-insensitive


def test_inbox_exports_its_filter_as_ndjson(env: Env) -> None:
    login(env)
    html = page(env, "/ui/decisions", tool="payments.refund")
    href = unescape(re.search(r'<a href="([^"]+)" class="export" download>', html).group(1))
    assert href == "/ui/decisions.ndjson?outcome=deny&tool=payments.refund"
    r = env.client.get(href)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    assert r.headers["content-disposition"].startswith('attachment; filename="intentgate-decisions-')
    lines = [json.loads(line) for line in r.text.splitlines()]
    want = [env.filled[n] for n in ("c_over_limit", "other_agent", "b_binding", "b_skip")]  # newest first
    assert [d["id"] for d in lines] == want
    assert all(d["outcome"] == "deny" and d["tool"] == "payments.refund" for d in lines)
    # whole audit records, as the audit export writes them
    exported = {d["id"]: d for d in map(json.loads, env.get("/v1/audit/export").text.splitlines())}
    assert lines == [exported[i] for i in want]
    assert lines[2]["arguments"] == {"order_id": "ORD-8", "amount": 5, "currency": "EUR"} and lines[2]["hash"]

    everything = [json.loads(line)["id"] for line in
                  env.client.get("/ui/decisions.ndjson", params={"outcome": "any"}).text.splitlines()]
    assert sorted(everything) == sorted(env.filled.ids.values())

    # in batches (keyset pages), every match once, newest first
    async def batched() -> list[list[str]]:
        return [[d.id for d in b] async for b in env.client.app.state.review.matching(DecisionQuery(), batch=3)]

    got = asyncio.run(batched())
    assert [len(b) for b in got][:-1] == [3] * (len(got) - 1) and sum(got, []) == everything
    assert env.client.get("/ui/decisions.ndjson", params={"since": "nope"}).status_code == 422
    env.client.cookies.clear()
    r = env.client.get(href, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")


def test_a_bucket_that_has_only_just_begun_is_a_bar_as_wide_as_the_others() -> None:
    """The range's ends cut the first and last buckets short (here the last has run 25 s of its
    30 min): each still gets a full slot, so a call held a moment ago is a bar one can click."""
    from intentgate.review.models import Backlog
    from intentgate.review.overview import Overview, OverviewBucket, resolve
    from intentgate.ui.overview import LEFT, WIDTH, chart

    now = datetime(2026, 12, 1, 20, 30, 25, tzinfo=UTC).timestamp()
    since, until, width, edges = resolve(OverviewQuery(range="24h"), now)
    assert edges[-1] - edges[-2] == 25 and width == 1800
    buckets = [OverviewBucket(start=datetime.fromtimestamp(a, UTC), end=datetime.fromtimestamp(b, UTC), allow=0,
                              deny=0, hold=int(i == len(edges) - 2), would_deny=0)
               for i, (a, b) in enumerate(zip(edges, edges[1:]))]
    ov = Overview(since=datetime.fromtimestamp(since, UTC), until=datetime.fromtimestamp(until, UTC), range="24h",
                  bucket_seconds=width, buckets=buckets, totals={"allow": 0, "deny": 0, "hold": 1, "would_deny": 0},
                  reasons=[], agents=[], tools=[], intents=[], distinct={},
                  backlog=Backlog(pending_approvals=0, active_grants=0, unsigned_grants=0), pending_approvals=[],
                  active_grants=[], unsigned_grants=[])
    hold = next(s for s in chart(ov).series if s.outcome == "hold")
    widths = {bar.w for bar in hold.bars}
    assert len(widths) == 1 and widths.pop() > 10  # 49 slots across the plot, the last one too
    last = hold.bars[-1]
    assert last.count == 1 and last.h > 0 and last.x + last.w <= WIDTH and hold.bars[0].x == LEFT
