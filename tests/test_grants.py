"""Break-glass grants: a time-boxed exception for one agent and one tool or intent, every use
counted and flagged, never overriding a failed task check.

Real pipeline on SQLite and PostgreSQL (the `db_url` fixture), real Rego, signed tokens.
"""

from __future__ import annotations

import asyncio

import pytest

from intentgate.decide import new_id
from intentgate.runtime import Runtime
from intentgate.store import GrantConflict, GrantRecord
from tests.test_approvals import BIG, REVIEWER, clock, policy_dir, rt  # noqa: F401 - fixtures shared with approvals
from tests.test_decide import MONDAY_10, OTHER, SUPPORT, begin_refund, call, walk_to_refund

OVER_LIMIT = {"order_id": "ORD-7", "amount": 4000, "currency": "EUR"}  # above the policy's 3000 EUR ceiling


def grant(agent: str = SUPPORT.id, *, tool: str | None = "payments.refund", intent: str | None = None,
          minutes: float = 15) -> GrantRecord:
    return GrantRecord(id=new_id("grt"), agent=agent, tool=tool, intent=intent, reason="incident INC-42",
                       created_by=REVIEWER, created_at=MONDAY_10, expires_at=MONDAY_10 + minutes * 60)


async def test_grant_lets_a_denied_call_through_flagged_and_counted(rt: Runtime) -> None:
    task_id = await begin_refund(rt)
    await walk_to_refund(rt, task_id)
    v = await rt.decider.decide(call(task_id, "refund", "payments.refund", OVER_LIMIT))
    assert v.outcome == "deny" and "policy:refund_over_limit" in v.reasons

    g = await rt.store.grants.create(grant())
    v = await rt.decider.decide(call(task_id, "refund", "payments.refund", OVER_LIMIT))
    assert v.outcome == "allow" and v.token is not None
    # flagged: the grant first, then what it overrode
    assert v.reasons[0] == f"break_glass:{g.id}" and "policy:refund_over_limit" in v.reasons
    assert "break-glass" in v.explanation
    used = await rt.store.grants.get(g.id)
    assert used.uses == 1 and used.last_used_decision == v.decision_id
    record = await rt.store.get_decision(v.decision_id)
    assert record.outcome == "allow" and record.reasons == v.reasons
    assert rt.store.verify_chain().ok


async def test_grant_by_intent_covers_its_tools_and_held_calls(rt: Runtime) -> None:
    task_id = await begin_refund(rt)
    await walk_to_refund(rt, task_id)
    await rt.store.grants.create(grant(tool=None, intent="refund-order"))
    v = await rt.decider.decide(call(task_id, "refund", "payments.refund", BIG))  # would be held
    assert v.outcome == "allow" and v.reasons[0].startswith("break_glass:") and "policy_hold" in v.reasons


async def test_grant_is_for_one_agent_and_one_tool(rt: Runtime) -> None:
    await rt.store.grants.create(grant(tool="email.send"))
    await rt.store.grants.create(grant(OTHER.id))
    task_id = await begin_refund(rt)
    await walk_to_refund(rt, task_id)
    v = await rt.decider.decide(call(task_id, "refund", "payments.refund", OVER_LIMIT))
    assert v.outcome == "deny"


async def test_grant_never_overrides_task_failures(rt: Runtime) -> None:
    task_id = await begin_refund(rt)
    await rt.store.grants.create(grant(OTHER.id))
    # OTHER holds a grant for payments.refund, but the task is SUPPORT's
    v = await rt.decider.decide(call(task_id, "refund", "payments.refund", OVER_LIMIT, agent=OTHER))
    assert v.outcome == "deny" and "task_not_owned" in v.reasons
    await rt.store.grants.create(grant())
    await rt.decider.end_task(SUPPORT, task_id)
    v = await rt.decider.decide(call(task_id, "refund", "payments.refund", OVER_LIMIT))
    assert v.outcome == "deny" and "task_ended:ended" in v.reasons
    v = await rt.decider.decide(call(None, None, "payments.refund", OVER_LIMIT))
    assert v.outcome == "deny" and v.reasons == ["missing_task_context"]


async def test_expired_or_revoked_grants_do_nothing(rt: Runtime, clock) -> None:
    task_id = await begin_refund(rt)
    await walk_to_refund(rt, task_id)
    short = await rt.store.grants.create(grant(minutes=1))
    clock.advance(61)
    v = await rt.decider.decide(call(task_id, "refund", "payments.refund", OVER_LIMIT))
    assert v.outcome == "deny"
    revoked = await rt.store.grants.create(grant(minutes=60))
    await rt.store.grants.revoke(revoked.id, reviewer=REVIEWER, now=clock.now())
    v = await rt.decider.decide(call(task_id, "refund", "payments.refund", OVER_LIMIT))
    assert v.outcome == "deny"
    assert (await rt.store.grants.get(short.id)).uses == 0 and (await rt.store.grants.get(revoked.id)).uses == 0
    with pytest.raises(GrantConflict, match="already revoked"):
        await rt.store.grants.revoke(revoked.id, reviewer=REVIEWER, now=clock.now())


async def test_every_grant_needs_review_until_signed_off_once(rt: Runtime) -> None:
    a = await rt.store.grants.create(grant())
    b = await rt.store.grants.create(grant(tool="email.send"))
    assert {g.id for g in await rt.store.grants.list(needs_review=True)} == {a.id, b.id}
    results = await asyncio.gather(
        *(rt.store.grants.sign_off(a.id, reviewer=f"r{i}", now=MONDAY_10, note="ok") for i in range(4)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, GrantRecord) for r in results) == 1
    assert all(r.why == "already signed off" for r in results if isinstance(r, GrantConflict))
    assert [g.id for g in await rt.store.grants.list(needs_review=True)] == [b.id]
    with pytest.raises(GrantConflict, match="unknown"):
        await rt.store.grants.sign_off("grt_nope", reviewer=REVIEWER, now=MONDAY_10)


async def test_grant_made_elsewhere_takes_effect_when_the_cache_is_renewed(rt: Runtime, db_url: str) -> None:
    """Denied calls consult a cached set of agents holding grants (one query per second, not per
    denial); a grant created through another store (another replica) shows up once it is renewed."""
    from intentgate.store import Store

    task_id = await begin_refund(rt)
    await walk_to_refund(rt, task_id)
    assert (await rt.decider.decide(call(task_id, "refund", "payments.refund", OVER_LIMIT))).outcome == "deny"
    elsewhere = Store.open(db_url)
    try:
        await elsewhere.grants.create(grant())
    finally:
        elsewhere.close()
    # still the cached set (this test runs well within a second of the first read)
    rt.store.grants.CACHE_SECONDS = 3600
    assert (await rt.decider.decide(call(task_id, "refund", "payments.refund", OVER_LIMIT))).outcome == "deny"
    rt.store.grants.CACHE_SECONDS = 0.0
    assert (await rt.decider.decide(call(task_id, "refund", "payments.refund", OVER_LIMIT))).outcome == "allow"
