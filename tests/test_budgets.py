"""Cross-task limits: budgets over a sliding window, spent in the decision's own transaction.

The shipped ``refund-order`` holds what one agent refunds beyond 2,000 EUR (per currency) in
24 hours, across all its tasks; custom intents below count calls, deny beyond, share a budget
between intents, and scope it by a parameter.  Two gateways on one database race for the last
of a budget: exactly the budget is spent, never more (SQLite and PostgreSQL).
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from intentgate.clock import FrozenClock
from intentgate.intents import Severity, check_intents
from intentgate.runtime import Runtime
from tests.conftest import INTENTS_DIR
from tests.tasks import ISSUER
from tests.test_decide import MONDAY_10, REFUND_PARAMS, SUPPORT, call, walk_to_refund
from tests.test_decide import clock, rt  # noqa: F401 - shared fixtures
from tests.test_task_origin import open_rt

REVIEWER = "carol"


async def refund_task(rt: Runtime) -> str:
    """A refund task the orchestrator began for SUPPORT, walked to its refund step."""
    task = (await rt.decider.begin_task(SUPPORT, "refund-order", REFUND_PARAMS, "queue", issuer=ISSUER)).task_id
    await walk_to_refund(rt, task)
    return task


def refund(task: str, amount: float, currency: str = "EUR") -> Any:
    return call(task, "refund", "payments.refund", {"order_id": "ORD-7", "amount": amount, "currency": currency})


async def spent(rt: Runtime, budget: str) -> float:
    def q(conn: Any) -> float:
        return float(conn.execute(text("SELECT coalesce(sum(amount), 0) FROM budget_usage WHERE budget = :b"),
                                  {"b": budget}).scalar())

    return await rt.store.db.run(q, read_only=True)


async def test_attack_refunds_split_across_tasks_meet_the_budget(rt: Runtime) -> None:
    """Each refund below the policy's hold threshold, together beyond what one agent may refund a day."""
    verdicts = []
    for _ in range(3):
        verdicts.append(await rt.decider.decide(refund(await refund_task(rt), 900)))
    assert [v.outcome for v in verdicts] == ["allow", "allow", "hold"]
    held = verdicts[2]
    assert held.reasons == ["budget_exceeded:refund_total"] and held.approval_id
    record = await rt.store.get_decision(held.decision_id)
    usage = record.policy_input["usage"]["budgets"]["refund_total"]
    assert usage["used"] == 1800 and usage["limit"] == 2000 and usage["this_call"] == 900
    assert usage["remaining"] == 200 and usage["window_seconds"] == 86400
    assert await spent(rt, "refund_total") == 1800
    # other currencies and other agents have budgets of their own
    assert (await rt.decider.decide(refund(await refund_task(rt), 900, "USD"))).outcome == "allow"


async def test_a_reviewer_lets_a_held_call_through_and_it_still_counts(rt: Runtime, clock: FrozenClock) -> None:
    task = await refund_task(rt)
    held = await rt.decider.decide(refund(task, 2500))  # over the budget in one call (and the policy holds it)
    assert held.outcome == "hold" and held.reasons[0] == "budget_exceeded:refund_total"
    await rt.store.decide_approval(held.approval_id, approve=True, reviewer=REVIEWER, now=MONDAY_10)
    allowed = await rt.decider.decide(refund(task, 2500))
    assert allowed.outcome == "allow" and allowed.reasons == [f"approved:{held.approval_id}"]
    assert await spent(rt, "refund_total") == 2500  # beyond the limit, by a person's decision
    v = await rt.decider.decide(refund(await refund_task(rt), 1))
    assert v.outcome == "hold" and v.reasons == ["budget_exceeded:refund_total"]
    clock.advance(86400)  # a day later it is still counted: spends leave the window a slice late, never early
    assert (await rt.decider.decide(refund(await refund_task(rt), 1))).outcome == "hold"
    clock.advance(86400 // 60 + 1)  # one slice (a sixtieth of the window) more, and the window has slid past it
    assert (await rt.decider.decide(refund(await refund_task(rt), 1))).outcome == "allow"


COUNTED = """
name: peek
version: "1"
agents: ["spiffe://example.org/agent/support-*"]
begin: [agent]
params: {ticket_id: {type: string}}
start: [read]
steps:
  read:
    tool: tickets.get_ticket
    arguments: {ticket_id: {bind: params.ticket_id}}
budgets:
  ticket_reads:
    step: read
    limit: 2
    window_seconds: 3600
    per: [agent, params.ticket_id]
    on_exceed: deny
"""


async def counted_rt(tmp_path: Path, db_url: str, clock: FrozenClock, extra: dict[str, str] | None = None
                     ) -> Runtime:
    intents = tmp_path / "intents"
    shutil.copytree(INTENTS_DIR, intents)
    (intents / "peek.yaml").write_text(COUNTED)
    for name, body in (extra or {}).items():
        (intents / name).write_text(body)
    return await open_rt(tmp_path, db_url, clock, intents_dir=intents)


async def read_ticket(rt: Runtime, ticket: str, intent: str = "peek") -> Any:
    task = (await rt.decider.begin_task(SUPPORT, intent, {"ticket_id": ticket}, "peek")).task_id
    return await rt.decider.decide(call(task, "read", "tickets.get_ticket", {"ticket_id": ticket}))


async def test_a_count_budget_per_parameter_denies_beyond_and_slides(tmp_path: Path, clock: FrozenClock,
                                                                     db_url: str) -> None:
    rt = await counted_rt(tmp_path, db_url, clock)
    try:
        assert [(await read_ticket(rt, "TCK-1")).outcome for _ in range(3)] == ["allow", "allow", "deny"]
        denied = await read_ticket(rt, "TCK-1")
        assert denied.reasons == ["budget_exceeded:ticket_reads"] and denied.approval_id is None
        assert (await read_ticket(rt, "TCK-2")).outcome == "allow"  # another ticket, another budget
        clock.advance(1800)
        assert (await read_ticket(rt, "TCK-1")).outcome == "deny"  # both reads still inside the hour
        clock.advance(1800 + 60 + 1)  # the hour, and one slice of it (60 s), since they were spent
        assert (await read_ticket(rt, "TCK-1")).outcome == "allow"
    finally:
        await rt.aclose()


SHARING = COUNTED.replace("name: peek", "name: glance")


async def test_intents_declaring_one_budget_name_share_it(tmp_path: Path, clock: FrozenClock, db_url: str) -> None:
    rt = await counted_rt(tmp_path, db_url, clock, {"glance.yaml": SHARING})
    try:
        assert (await read_ticket(rt, "TCK-1", "peek")).outcome == "allow"
        assert (await read_ticket(rt, "TCK-1", "glance")).outcome == "allow"
        assert (await read_ticket(rt, "TCK-1", "glance")).reasons == ["budget_exceeded:ticket_reads"]
    finally:
        await rt.aclose()


@pytest.mark.parametrize("amount", [300])
async def test_two_gateways_racing_spend_exactly_the_budget(tmp_path: Path, clock: FrozenClock, db_url: str,
                                                            amount: int) -> None:
    """Replicas on one database: 16 refunds of 300 EUR at once, each in its own task, for one
    agent with 2,000 EUR a day: six are allowed (1,800), the rest held; never 2,100."""
    a = await open_rt(tmp_path, db_url, clock)
    b = await open_rt(tmp_path, db_url, clock)
    try:
        tasks = [await refund_task(a) for _ in range(16)]
        verdicts = await asyncio.gather(*(rt.decider.decide(refund(task, amount))
                                          for rt, task in zip([a, b] * 8, tasks, strict=True)))
        outcomes = [v.outcome for v in verdicts]
        assert outcomes.count("allow") == 2000 // amount, outcomes
        assert all(v.reasons == ["budget_exceeded:refund_total"] for v in verdicts if v.outcome != "allow"), verdicts
        assert await spent(a, "refund_total") == (2000 // amount) * amount
        assert a.store.verify_chain().ok
    finally:
        await a.aclose()
        await b.aclose()


def test_budgets_that_make_no_sense_are_errors_naming_the_field(tmp_path: Path) -> None:
    cases = {
        "unknown-step": ("step: read", "step: nowhere", "budgets.ticket_reads.step"),
        "sum-of-text": ("    limit: 2\n", "    limit: 2\n    sum: ticket_id\n", "budgets.ticket_reads.sum"),
        "sum-of-unknown": ("    limit: 2\n", "    limit: 2\n    sum: nothing\n", "budgets.ticket_reads.sum"),
        "per-unknown-param": ("per: [agent, params.ticket_id]", "per: [agent, params.nope]",
                              "budgets.ticket_reads.per"),
        "per-garbage": ("per: [agent, params.ticket_id]", "per: [agent, everyone]", "budgets.ticket_reads.per"),
        "no-limit": ("    limit: 2\n", "    limit: 0\n", "budgets.ticket_reads.limit"),
        "huge-window": ("window_seconds: 3600", "window_seconds: 99999999999", "budgets.ticket_reads.window_seconds"),
        "unknown-key": ("    on_exceed: deny\n", "    on_exceed: deny\n    refill: daily\n",
                        "budgets.ticket_reads.refill"),
        "bad-exceed": ("on_exceed: deny", "on_exceed: shrug", "budgets.ticket_reads.on_exceed"),
    }
    for name, (old, new, field) in cases.items():
        d = tmp_path / name
        d.mkdir()
        assert old in COUNTED, name
        text_ = COUNTED.replace(old, new)
        if name == "sum-of-text":  # declared as text: a budget cannot add it up
            text_ = text_.replace("{ticket_id: {bind: params.ticket_id}}", "{ticket_id: {type: string}}")
        (d / "peek.yaml").write_text(text_)
        registry, problems = check_intents(d)
        errors = [p for p in problems if p.severity is Severity.ERROR]
        assert len(registry) == 0 and errors, (name, problems)
        assert any(p.field == field and p.file.endswith("peek.yaml") and p.intent == "peek" for p in errors), \
            (name, [str(p) for p in errors])
    d = tmp_path / "conflict"
    d.mkdir()
    (d / "peek.yaml").write_text(COUNTED)
    (d / "glance.yaml").write_text(SHARING.replace("limit: 2", "limit: 5"))
    registry, problems = check_intents(d)
    [conflict] = [p for p in problems if p.severity is Severity.ERROR]
    assert "one name is one budget" in conflict.message and conflict.field == "budgets.ticket_reads"
    assert conflict.intent == "peek" and registry.names() == ["glance"]  # the file read second is refused


async def test_replay_judges_budgets_by_the_candidate_intents(rt: Runtime, tmp_path: Path) -> None:
    from intentgate.intents import load_intents
    from intentgate.policy import make_engine
    from intentgate.replay import Replayer
    from tests.conftest import POLICY_DIR

    verdicts = [await rt.decider.decide(refund(await refund_task(rt), 900)) for _ in range(3)]
    assert [v.outcome for v in verdicts] == ["allow", "allow", "hold"]
    candidate = tmp_path / "candidate"
    shutil.copytree(INTENTS_DIR, candidate)
    path = candidate / "refund-order.yaml"
    path.write_text(path.read_text().replace("    limit: 2000\n", "    limit: 1000\n"))
    registry = load_intents(candidate)
    engine = make_engine("embedded", policy_dir=POLICY_DIR, intents_doc=registry.data_document())
    try:
        report = await Replayer(rt.store, registry, engine).replay(rt.store.decision_batches())
    finally:
        await engine.aclose()
    moved = {c.decision_id: (c.before, c.after, c.after_reasons) for c in report.changes}
    # with 1,000 EUR a day, the second refund (used 900 then) would have been held, not the third
    assert moved == {verdicts[1].decision_id: ("allow", "hold", ["budget_exceeded:refund_total"])}



UNTYPED = """
name: tip
version: "1"
agents: ["spiffe://example.org/agent/support-*"]
begin: [agent]
start: [pay]
steps:
  pay:
    tool: orders.get_order
    arguments: {order_id: {type: string}, amount: {}}
budgets:
  tips: {step: pay, sum: amount, limit: 100, window_seconds: 3600, on_exceed: deny}
"""


async def test_an_amount_that_is_not_a_number_counts_as_over_the_budget(tmp_path: Path, clock: FrozenClock,
                                                                       db_url: str) -> None:
    """The schema lets anything through (no type): the budget cannot measure "lots", so it refuses."""
    rt = await counted_rt(tmp_path, db_url, clock, {"tip.yaml": UNTYPED})
    try:
        for amount, outcome in (("lots", "deny"), (float("inf"), "deny"), (40, "allow"), (-500, "allow"),
                                (70, "deny")):
            task = (await rt.decider.begin_task(SUPPORT, "tip", {}, "tip")).task_id
            v = await rt.decider.decide(call(task, "pay", "orders.get_order", {"order_id": "ORD-7", "amount": amount}))
            assert v.outcome == outcome, (amount, v)
            if outcome == "deny" and amount != float("inf"):  # infinity is no JSON: malformed_request
                assert v.reasons == ["budget_exceeded:tips"], v
        assert await spent(rt, "tips") == 40  # the negative amount credited nothing
    finally:
        await rt.aclose()
