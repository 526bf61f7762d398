"""Held calls and approvals: an approval authorises exactly the held call, once, until it expires.

Real pipeline (intents, embedded Rego, SQLite and PostgreSQL stores, signed tokens).
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from intentgate.clock import FrozenClock
from intentgate.config import load_config
from intentgate.runtime import Runtime
from intentgate.store import ApprovalConflict
from tests.conftest import INTENTS_DIR, POLICY_DIR
from tests.test_decide import MONDAY_10, SUPPORT, begin_refund, call, walk_to_refund

BIG = {"order_id": "ORD-7", "amount": 1800, "currency": "EUR"}
REVIEWER = "admin:alice"


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(MONDAY_10)


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    copy = tmp_path / "opa"
    shutil.copytree(POLICY_DIR, copy)
    return copy


@pytest.fixture
async def rt(tmp_path: Path, clock: FrozenClock, db_url: str, policy_dir: Path):
    config = load_config(None, data_dir=tmp_path, intents_dir=INTENTS_DIR, policy_dir=policy_dir)
    config = config.model_copy(update={"store": config.store.model_copy(update={"url": db_url})})
    runtime = await Runtime.open(config, clock=clock)
    yield runtime
    await runtime.aclose()


async def held_refund(rt: Runtime) -> tuple[str, str]:
    task_id = await begin_refund(rt)
    await walk_to_refund(rt, task_id)
    v = await rt.decider.decide(call(task_id, "refund", "payments.refund", BIG))
    assert v.outcome == "hold" and v.approval_id
    return task_id, v.approval_id


async def test_approved_call_is_allowed_once_on_retry(rt: Runtime) -> None:
    task_id, approval_id = await held_refund(rt)
    approved = await rt.decider.store.decide_approval(approval_id, approve=True, reviewer=REVIEWER, now=MONDAY_10,
                                                      note="customer verified")
    assert approved.status == "approved" and approved.decided_by == REVIEWER

    v = await rt.decider.decide(call(task_id, "refund", "payments.refund", BIG))
    assert v.outcome == "allow" and v.reasons == [f"approved:{approval_id}"] and v.token is not None
    assert "approved by a reviewer" in v.explanation
    claims = await rt.verifier.verify_and_consume(v.token.token, tool="payments.refund", arguments=BIG,
                                                  audience="payments", ledger=rt.store)
    assert claims.detail.step == "refund" and claims.detail.task == task_id
    used = await rt.store.get_approval(approval_id)
    assert used.status == "used" and used.used_by_decision == v.decision_id
    assert rt.store.verify_chain().ok


async def test_approval_authorises_only_the_exact_call(rt: Runtime) -> None:
    task_id, approval_id = await held_refund(rt)
    await rt.store.decide_approval(approval_id, approve=True, reviewer=REVIEWER, now=MONDAY_10)
    # different amount: a different arguments digest, so held again with a new approval
    other = {**BIG, "amount": 2400}
    v = await rt.decider.decide(call(task_id, "refund", "payments.refund", other))
    assert v.outcome == "hold" and v.approval_id != approval_id
    assert (await rt.store.get_approval(approval_id)).status == "approved"  # untouched, still usable
    # another agent cannot ride on it either (the task is not theirs)
    stranger = call(task_id, "refund", "payments.refund", BIG, agent=SUPPORT.model_copy(update={"id": "spiffe://x/y"}))
    v = await rt.decider.decide(stranger)
    assert v.outcome == "deny"
    v = await rt.decider.decide(call(task_id, "refund", "payments.refund", BIG))
    assert v.outcome == "allow"


async def test_rejected_or_expired_approvals_authorise_nothing(rt: Runtime, clock: FrozenClock) -> None:
    task_id, approval_id = await held_refund(rt)
    rejected = await rt.store.decide_approval(approval_id, approve=False, reviewer=REVIEWER, now=MONDAY_10,
                                              note="not this one")
    assert rejected.status == "rejected"
    v = await rt.decider.decide(call(task_id, "refund", "payments.refund", BIG))
    assert v.outcome == "hold" and v.approval_id != approval_id

    # approved, but the retry comes after the approval expired
    approved = await rt.store.decide_approval(v.approval_id, approve=True, reviewer=REVIEWER, now=MONDAY_10)
    clock.advance(approved.expires_at - MONDAY_10 + 1)
    v2 = await rt.decider.decide(call(task_id, "refund", "payments.refund", BIG))
    assert v2.outcome != "allow"


async def test_an_approval_is_decided_once(rt: Runtime, clock: FrozenClock) -> None:
    _, approval_id = await held_refund(rt)
    results = await asyncio.gather(
        *(rt.store.decide_approval(approval_id, approve=i % 2 == 0, reviewer=f"r{i}", now=MONDAY_10) for i in range(6)),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, Exception)]
    assert len(winners) == 1
    assert all(isinstance(r, ApprovalConflict) and r.why.startswith("already ") for r in results if r not in winners)
    with pytest.raises(ApprovalConflict, match="unknown"):
        await rt.store.decide_approval("apr_nope", approve=True, reviewer=REVIEWER, now=MONDAY_10)

    _, late = await held_refund(rt)
    pending = await rt.store.get_approval(late)
    with pytest.raises(ApprovalConflict, match="expired"):
        await rt.store.decide_approval(late, approve=True, reviewer=REVIEWER, now=pending.expires_at + 1)


async def test_concurrent_retries_use_the_approval_once(rt: Runtime) -> None:
    task_id, approval_id = await held_refund(rt)
    await rt.store.decide_approval(approval_id, approve=True, reviewer=REVIEWER, now=MONDAY_10)
    verdicts = await asyncio.gather(*(rt.decider.decide(call(task_id, "refund", "payments.refund", BIG))
                                      for _ in range(6)))
    assert [v.outcome for v in verdicts].count("allow") == 1
    assert sum(1 for v in verdicts if v.token is not None) == 1
    assert (await rt.store.get_approval(approval_id)).status == "used"


async def test_policy_change_voids_an_approval(rt: Runtime, policy_dir: Path) -> None:
    task_id, approval_id = await held_refund(rt)
    await rt.store.decide_approval(approval_id, approve=True, reviewer=REVIEWER, now=MONDAY_10)
    data = policy_dir / "intentgate" / "data.json"
    data.write_text(data.read_text().replace('"EUR": 1000', '"EUR": 1001'))  # a new policy revision
    before = rt.decider.policy.revision
    assert await rt.decider.policy.reload_if_changed(force=True) and rt.decider.policy.revision != before
    v = await rt.decider.decide(call(task_id, "refund", "payments.refund", BIG))
    assert v.outcome == "hold" and v.approval_id != approval_id
