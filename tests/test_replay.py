"""What-if replay: recorded decisions against a candidate policy and intents, nothing written.

A real history is made through the real pipeline (SQLite and PostgreSQL), then replayed with
the embedded Rego engine over changed copies of opa/ and intents/.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from intentgate.identity import AgentIdentity
from intentgate.intents import load_intents
from intentgate.policy import make_engine
from intentgate.reads import ReadRequest, decide_read
from intentgate.replay import Replayer
from intentgate.runtime import Runtime
from tests.conftest import INTENTS_DIR
from tests.test_approvals import BIG, REVIEWER, clock, policy_dir, rt  # noqa: F401 - shared fixtures
from tests.test_decide import MONDAY_10, SUPPORT, begin_refund, call, walk_to_refund
from tests.tasks import ISSUER

SMALL = {"order_id": "ORD-7", "amount": 30, "currency": "EUR"}
OVER = {"order_id": "ORD-7", "amount": 4000, "currency": "EUR"}


async def make_history(rt: Runtime) -> dict[str, str]:
    """One decision of each interesting kind; returns {label: decision id}."""
    ids: dict[str, str] = {}
    small = await begin_refund(rt)
    await walk_to_refund(rt, small)
    ids["small_allow"] = (await rt.decider.decide(call(small, "refund", "payments.refund", SMALL))).decision_id
    big = await begin_refund(rt)
    await walk_to_refund(rt, big)
    held = await rt.decider.decide(call(big, "refund", "payments.refund", BIG))
    ids["big_hold"] = held.decision_id
    ids["over_deny"] = (await rt.decider.decide(call(big, "refund", "payments.refund", OVER))).decision_id
    await rt.store.decide_approval(held.approval_id, approve=True, reviewer=REVIEWER, now=MONDAY_10)
    ids["big_approved"] = (await rt.decider.decide(call(big, "refund", "payments.refund", BIG))).decision_id
    skipped = await begin_refund(rt)
    ids["out_of_order"] = (await rt.decider.decide(
        call(skipped, "refund", "payments.refund", SMALL))).decision_id
    ids["read_allow"] = (await decide_read(rt.decider, ReadRequest(
        agent=SUPPORT, action="resources/read", upstream="tickets", name="tickets://TCK-1"))).decision_id
    ids["read_deny"] = (await decide_read(rt.decider, ReadRequest(
        agent=SUPPORT, action="resources/read", upstream="tickets", name="tickets://customers/all"))).decision_id
    return ids


def candidate(tmp_path: Path, policy_dir: Path, *, data: dict | None = None, intents_edit=None) -> Replayer:
    """A Replayer over changed copies of the policy and intents (the runtime's store)."""
    pol = tmp_path / "candidate-opa"
    shutil.copytree(policy_dir, pol)
    if data is not None:
        path = pol / "intentgate" / "data.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **data}))
    intents_dir = tmp_path / "candidate-intents"
    shutil.copytree(INTENTS_DIR, intents_dir)
    if intents_edit is not None:
        intents_edit(intents_dir)
    registry = load_intents(intents_dir)
    return registry, make_engine("embedded", policy_dir=pol, intents_doc=registry.data_document())


async def replay(rt: Runtime, tmp_path: Path, policy_dir: Path, **changes):
    registry, engine = candidate(tmp_path, policy_dir, **changes)
    report = await Replayer(rt.store, registry, engine).replay(rt.store.decision_batches())
    await engine.aclose()
    return report


def moved(report) -> dict[str, tuple[str, str]]:
    return {c.decision_id: (c.before, c.after) for c in report.changes}


async def test_unchanged_policy_changes_nothing_and_nothing_is_written(rt: Runtime, tmp_path, policy_dir) -> None:
    await make_history(rt)
    before = await rt.store.counts()
    report = await replay(rt, tmp_path, policy_dir)
    assert report.changes == [] and report.transitions == {}
    # walked steps, refunds, the approved retry, the out-of-order call, two reads, three task begins
    assert report.unchanged == 2 * 2 + 5 + 2 + 3
    assert report.skipped == {}
    assert report.checked == report.unchanged and report.decisions_per_second > 0
    assert await rt.store.counts() == before and rt.store.verify_chain().ok


async def test_lower_ceiling_turns_allows_and_holds_into_denies(rt: Runtime, tmp_path, policy_dir) -> None:
    ids = await make_history(rt)
    limits = {"refund": {"max": {"EUR": 20}, "hold_above": {"EUR": 10}}, "token_ttl_seconds": {"payments": 15}}
    report = await replay(rt, tmp_path, policy_dir, data={"limits": limits})
    assert moved(report) == {
        ids["small_allow"]: ("allow", "deny"),
        ids["big_hold"]: ("hold", "deny"),
        ids["big_approved"]: ("hold", "deny"),  # compared as held: approvals are not verdicts
    }
    assert report.allow_to_deny == 1 and report.transitions["hold->deny"] == 2
    change = next(c for c in report.changes if c.decision_id == ids["small_allow"])
    assert change.after_reasons[0] == "policy_denied" and "policy:refund_over_limit" in change.after_reasons
    assert change.tool == "payments.refund" and change.before_reasons == []


async def test_higher_limits_release_holds_and_denies(rt: Runtime, tmp_path, policy_dir) -> None:
    ids = await make_history(rt)
    limits = {"refund": {"max": {"EUR": 5000}, "hold_above": {"EUR": 4500}}, "token_ttl_seconds": {}}
    reads = {"resources": {"tickets": ["tickets://**"]}, "prompts": {}}
    report = await replay(rt, tmp_path, policy_dir, data={"limits": limits, "reads": reads})
    assert moved(report) == {
        ids["big_hold"]: ("hold", "allow"),
        ids["big_approved"]: ("hold", "allow"),
        # within the candidate's limits now, but 4,000 EUR is beyond the intent's 2,000 EUR budget
        ids["over_deny"]: ("deny", "hold"),
        ids["read_deny"]: ("deny", "allow"),
    }
    assert report.deny_to_allow == 3  # hold->allow counts as released too
    assert ids["out_of_order"] not in moved(report)  # the workflow still refuses it


async def test_changed_intents_are_replayed_too(rt: Runtime, tmp_path, policy_dir) -> None:
    ids = await make_history(rt)

    def require_approval(directory: Path) -> None:
        path = directory / "refund-order.yaml"
        path.write_text(path.read_text().replace(
            "      reason: {type: string, minLength: 1, maxLength: 500, optional: true}\n",
            "      reason: {type: string, minLength: 1, maxLength: 500, optional: true}\n    approval: required\n"))

    report = await replay(rt, tmp_path, policy_dir, intents_edit=require_approval)
    assert moved(report) == {ids["small_allow"]: ("allow", "hold")}
    assert report.changes[0].after_reasons == ["approval_required"]


async def test_calls_without_recorded_arguments_are_skipped(tmp_path, clock, db_url, policy_dir) -> None:  # noqa: F811
    from intentgate.config import load_config

    config = load_config(None, data_dir=tmp_path, intents_dir=INTENTS_DIR, policy_dir=policy_dir)
    config = config.model_copy(update={"store": config.store.model_copy(update={"url": db_url}),
                                       "audit": config.audit.model_copy(update={"arguments": False})})
    runtime = await Runtime.open(config, clock=clock)
    try:
        task = await begin_refund(runtime)
        await walk_to_refund(runtime, task)
        report = await replay(runtime, tmp_path, policy_dir)
        assert report.skipped == {"arguments not recorded": 2}  # the task begin replays: unchanged
    finally:
        await runtime.aclose()


@pytest.mark.parametrize("who", ["spiffe://example.org/agent/support-9"])
async def test_agent_claims_and_identity_come_from_the_record(rt: Runtime, tmp_path, policy_dir, who) -> None:
    agent = AgentIdentity(id=who)
    started = await rt.decider.begin_task(agent, "refund-order", {"ticket_id": "TCK-1", "order_id": "ORD-7"}, "x", issuer=ISSUER)
    v = await rt.decider.decide(call(started.task_id, "read_ticket", "tickets.get_ticket", {"ticket_id": "TCK-1"},
                                     agent=agent))
    assert v.outcome == "allow"

    def drop_support_agents(directory: Path) -> None:
        path = directory / "refund-order.yaml"
        path.write_text(path.read_text().replace("  - spiffe://example.org/agent/support-*\n",
                                                 "  - spiffe://example.org/agent/support-1\n"))

    report = await replay(rt, tmp_path, policy_dir, intents_edit=drop_support_agents)
    # the task would not have been begun for this agent, nor its call allowed
    assert moved(report) == {started.decision_id: ("allow", "deny"), v.decision_id: ("allow", "deny")}
    changes = {c.decision_id: c for c in report.changes}
    assert changes[started.decision_id].after_reasons == ["agent_not_permitted"]
    assert "policy:agent_not_permitted" in changes[v.decision_id].after_reasons
