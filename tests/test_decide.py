"""The decision pipeline end to end in process: real intents, real Rego, real SQLite, real JWTs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from intentgate.clock import FrozenClock
from intentgate.config import load_config
from intentgate.decide import CallRequest
from intentgate.errors import ReasonCode, TaskError, TokenError
from intentgate.identity import AgentIdentity
from intentgate.runtime import Runtime
from intentgate.store import DecisionRecord
from intentgate.workflow import Task
from tests.conftest import INTENTS_DIR, POLICY_DIR
from tests.tasks import ISSUER

SUPPORT = AgentIdentity(id="spiffe://example.org/agent/support-1")
OTHER = AgentIdentity(id="spiffe://example.org/agent/support-2")
OPS = AgentIdentity(id="spiffe://example.org/agent/ops-1")
# Monday 2027-01-04 10:00:00 UTC: inside the change window
MONDAY_10 = 1_799_056_800.0
REFUND_PARAMS = {"ticket_id": "TCK-1", "order_id": "ORD-7"}


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(MONDAY_10)


@pytest.fixture
async def rt(tmp_path: Path, clock: FrozenClock, db_url: str):
    config = load_config(None, data_dir=tmp_path, intents_dir=INTENTS_DIR, policy_dir=POLICY_DIR)
    config = config.model_copy(update={"store": config.store.model_copy(update={"url": db_url})})
    runtime = await Runtime.open(config, clock=clock)
    yield runtime
    await runtime.aclose()


def call(task_id: str | None, step: str | None, tool: str, args: dict, agent: AgentIdentity = SUPPORT) -> CallRequest:
    upstream, _, name = tool.partition(".")
    return CallRequest(agent=agent, task_id=task_id, step=step, upstream=upstream, tool=name, untrusted_arguments=args)


async def begin_refund(rt: Runtime, agent: AgentIdentity = SUPPORT) -> str:
    started = await rt.decider.begin_task(agent, "refund-order", REFUND_PARAMS, "customer asked", issuer=ISSUER)
    return started.task_id


async def walk_to_refund(rt: Runtime, task_id: str) -> None:
    for step, tool, args in [
        ("read_ticket", "tickets.get_ticket", {"ticket_id": "TCK-1"}),
        ("lookup", "orders.get_order", {"order_id": "ORD-7"}),
    ]:
        v = await rt.decider.decide(call(task_id, step, tool, args))
        assert v.outcome == "allow", v


async def test_conformant_workflow_completes(rt: Runtime) -> None:
    task_id = await begin_refund(rt)
    await walk_to_refund(rt, task_id)
    refund_args = {"order_id": "ORD-7", "amount": 30, "currency": "EUR"}
    v = await rt.decider.decide(call(task_id, "refund", "payments.refund", refund_args))
    assert v.outcome == "allow" and v.reasons == [] and v.allowed_next == ["comment"]
    claims = await rt.verifier.verify_and_consume(
        v.token.token, tool="payments.refund", arguments=refund_args, audience="payments", ledger=rt.store
    )
    assert claims.sub == SUPPORT.id
    v = await rt.decider.decide(call(task_id, "comment", "tickets.add_comment", {"ticket_id": "TCK-1", "body": "done"}))
    assert v.outcome == "allow" and v.task_completed
    task = await rt.store.get_task(task_id)
    assert task.status == "completed"
    assert [h.step for h in task.history] == ["read_ticket", "lookup", "refund", "comment"]
    # nothing more on a completed task
    v = await rt.decider.decide(call(task_id, "comment", "tickets.add_comment", {"ticket_id": "TCK-1", "body": "x"}))
    assert v.outcome == "deny" and "task_ended:completed" in v.reasons
    assert rt.store.verify_chain().ok


async def test_decision_is_committed_with_token_id_before_token_is_returned(rt: Runtime) -> None:
    task_id = await begin_refund(rt)
    v = await rt.decider.decide(call(task_id, "read_ticket", "tickets.get_ticket", {"ticket_id": "TCK-1"}))
    stored = await rt.store.get_decision(v.decision_id)
    assert stored is not None and stored.outcome == "allow"
    assert stored.token_jti == v.token.jti
    assert (await rt.store.get_token(v.token.jti)).status == "issued"
    assert stored.policy_input["workflow"] == {"ok": True, "violations": []}
    assert stored.policy_revision == rt.policy.revision
    assert set(stored.timings_us) == {"task", "workflow", "policy", "token"}
    assert all(isinstance(v, int) and v >= 0 for v in stored.timings_us.values())


async def test_skipped_step_denied_and_recorded(rt: Runtime) -> None:
    task_id = await begin_refund(rt)
    v = await rt.decider.decide(
        call(task_id, "refund", "payments.refund", {"order_id": "ORD-7", "amount": 5, "currency": "EUR"})
    )
    assert v.outcome == "deny" and v.token is None
    assert "step_out_of_order:refund" in v.reasons
    assert v.allowed_next == ["read_ticket"]
    assert "not allowed at this point" in v.explanation
    stored = await rt.store.get_decision(v.decision_id)
    assert stored.outcome == "deny" and stored.token_jti is None
    assert stored.policy_input["workflow"]["ok"] is False
    # the denied call did not move the task
    assert (await rt.store.get_task(task_id)).history == []


async def test_tampered_argument_binding(rt: Runtime) -> None:
    task_id = await begin_refund(rt)
    await walk_to_refund(rt, task_id)
    v = await rt.decider.decide(
        call(task_id, "refund", "payments.refund", {"order_id": "ORD-8", "amount": 5, "currency": "EUR"})
    )
    assert v.outcome == "deny" and v.reasons == ["binding_mismatch:order_id"]


async def test_wrong_tool_for_step(rt: Runtime) -> None:
    task_id = await begin_refund(rt)
    v = await rt.decider.decide(call(task_id, "read_ticket", "email.send", {"ticket_id": "TCK-1"}))
    assert v.outcome == "deny" and "tool_mismatch:email.send" in v.reasons


async def test_large_refund_is_held_with_pending_approval(rt: Runtime) -> None:
    task_id = await begin_refund(rt)
    await walk_to_refund(rt, task_id)
    v = await rt.decider.decide(
        call(task_id, "refund", "payments.refund", {"order_id": "ORD-7", "amount": 2500, "currency": "EUR"})
    )
    assert v.outcome == "hold" and v.token is None
    assert "policy_hold" in v.reasons and "policy:large_refund" in v.reasons
    assert v.reasons[0] == "budget_exceeded:refund_total"  # 2,500 EUR is beyond the 2,000 EUR budget too
    approval = await rt.store.get_approval(v.approval_id)
    assert approval.status == "pending" and approval.step == "refund" and approval.task_id == task_id
    assert (await rt.store.get_task(task_id)).last_step == "lookup"


async def test_approval_required_step_is_held(rt: Runtime) -> None:
    started = await rt.decider.begin_task(
        OPS, "rotate-credential", {"service": "billing", "owner_email": "owners@example.org"}, "quarterly rotation"
    , issuer=ISSUER)
    v = await rt.decider.decide(
        call(started.task_id, "describe", "secrets.describe_credential", {"service": "billing"}, agent=OPS)
    )
    assert v.outcome == "allow", v
    v = await rt.decider.decide(
        call(
            started.task_id, "rotate", "secrets.rotate_credential", {"service": "billing", "grace_period_seconds": 600},
            agent=OPS,
        )
    )
    assert v.outcome == "hold" and v.reasons[0] == "approval_required" and v.approval_id


async def test_unknown_task_and_missing_context(rt: Runtime) -> None:
    v = await rt.decider.decide(call("tsk_nope", "read_ticket", "tickets.get_ticket", {"ticket_id": "TCK-1"}))
    assert v.outcome == "deny" and v.reasons == ["unknown_task"]
    v = await rt.decider.decide(call(None, None, "tickets.get_ticket", {"ticket_id": "TCK-1"}))
    assert v.outcome == "deny" and v.reasons == ["missing_task_context"]
    for d in (v.decision_id,):
        assert (await rt.store.get_decision(d)).reasons == ["missing_task_context"]


async def test_another_agents_task(rt: Runtime) -> None:
    task_id = await begin_refund(rt, SUPPORT)
    v = await rt.decider.decide(call(task_id, "read_ticket", "tickets.get_ticket", {"ticket_id": "TCK-1"}, agent=OTHER))
    assert v.outcome == "deny" and "task_not_owned" in v.reasons
    with pytest.raises(TaskError) as exc:
        await rt.decider.end_task(OTHER, task_id)
    assert exc.value.code is ReasonCode.TASK_NOT_OWNED


async def test_expired_task(rt: Runtime, clock: FrozenClock) -> None:
    task_id = await begin_refund(rt)
    clock.advance(901)
    v = await rt.decider.decide(call(task_id, "read_ticket", "tickets.get_ticket", {"ticket_id": "TCK-1"}))
    assert v.outcome == "deny" and v.reasons == ["task_expired"]


async def test_expiry_sweep_revokes_tokens(rt: Runtime, clock: FrozenClock) -> None:
    task_id = await begin_refund(rt)
    v = await rt.decider.decide(call(task_id, "read_ticket", "tickets.get_ticket", {"ticket_id": "TCK-1"}))
    clock.advance(901)
    assert await rt.decider.expire_tasks() == 1
    assert (await rt.store.get_task(task_id)).status == "expired"
    assert (await rt.store.get_token(v.token.jti)).status == "revoked"


async def test_token_ttl_never_outlives_task(rt: Runtime, clock: FrozenClock) -> None:
    task_id = await begin_refund(rt)
    clock.advance(900 - 10)  # ten seconds of task left, default token TTL is 30
    v = await rt.decider.decide(call(task_id, "read_ticket", "tickets.get_ticket", {"ticket_id": "TCK-1"}))
    assert v.outcome == "allow"
    task = await rt.store.get_task(task_id)
    assert v.token.expires_at <= task.expires_at


async def test_end_task_revokes_unconsumed_tokens(rt: Runtime) -> None:
    task_id = await begin_refund(rt)
    args = {"ticket_id": "TCK-1"}
    v = await rt.decider.decide(call(task_id, "read_ticket", "tickets.get_ticket", args))
    ended = await rt.decider.end_task(SUPPORT, task_id)
    assert ended.revoked_tokens == 1
    with pytest.raises(TokenError) as exc:
        await rt.verifier.verify_and_consume(
            v.token.token, tool="tickets.get_ticket", arguments=args, audience="tickets", ledger=rt.store
        )
    assert exc.value.code is ReasonCode.TOKEN_REVOKED


async def test_begin_task_refusals_are_recorded(rt: Runtime) -> None:
    cases = [
        (SUPPORT, "no-such-intent", REFUND_PARAMS, ReasonCode.UNKNOWN_INTENT),
        (OPS, "refund-order", REFUND_PARAMS, ReasonCode.AGENT_NOT_PERMITTED),
        (SUPPORT, "refund-order", {"order_id": "7"}, ReasonCode.INVALID_PARAMS),
    ]
    for agent, intent, params, code in cases:
        with pytest.raises(TaskError) as exc:
            await rt.decider.begin_task(agent, intent, params, "why", issuer=ISSUER)
        assert exc.value.code is code
        stored = await rt.store.get_decision(exc.value.decision_id)
        assert stored.kind == "task/begin" and stored.outcome == "deny" and stored.reasons == [code.value]


async def test_begin_task_with_parameters_that_are_not_plain_json_is_a_recorded_refusal(rt: Runtime) -> None:
    """Called directly (not only through the front, which checks first): NaN or a huge integer
    in the parameters must not reach the hash-chained log, nor fail its commit."""
    for params in ({"ticket_id": "TCK-1", "order_id": float("nan")}, {"ticket_id": 2**80, "order_id": "ORD-7"}):
        with pytest.raises(TaskError) as exc:
            await rt.decider.begin_task(SUPPORT, "refund-order", params, "why", issuer=ISSUER)
        assert exc.value.code is ReasonCode.MALFORMED_REQUEST
        stored = await rt.store.get_decision(exc.value.decision_id)
        assert stored.outcome == "deny" and stored.reasons == ["malformed_request:arguments"]
        assert stored.policy_input is None and stored.masked == ["/policy_input"]
    assert rt.store.verify_chain().ok


async def test_concurrent_calls_for_one_step_allow_exactly_one(rt: Runtime) -> None:
    task_id = await begin_refund(rt)
    req = call(task_id, "read_ticket", "tickets.get_ticket", {"ticket_id": "TCK-1"})
    verdicts = await asyncio.gather(*(rt.decider.decide(req) for _ in range(8)))
    outcomes = [v.outcome for v in verdicts]
    assert outcomes.count("allow") == 1, [v.reasons for v in verdicts]
    losers = [r for v in verdicts if v.outcome == "deny" for r in v.reasons]
    assert all(r.split(":")[0] in {"concurrent_step", "step_out_of_order"} for r in losers)
    assert len((await rt.store.get_task(task_id)).history) == 1


async def test_shadow_mode_lets_workflow_violations_through_but_not_task_failures(
    tmp_path: Path, clock: FrozenClock
) -> None:
    config = load_config(None, data_dir=tmp_path, intents_dir=INTENTS_DIR, policy_dir=POLICY_DIR, mode="shadow")
    rt = await Runtime.open(config, clock=clock)
    try:
        task_id = await begin_refund(rt)
        v = await rt.decider.decide(
            call(task_id, "refund", "payments.refund", {"order_id": "ORD-7", "amount": 5, "currency": "EUR"})
        )
        assert v.outcome == "would_deny" and v.token is not None and "step_out_of_order:refund" in v.reasons
        v = await rt.decider.decide(
            call(task_id, "read_ticket", "tickets.get_ticket", {"ticket_id": "TCK-1"}, agent=OTHER)
        )
        assert v.outcome == "deny" and v.token is None and "task_not_owned" in v.reasons
    finally:
        await rt.aclose()


async def test_policy_failure_fails_closed(tmp_path: Path, clock: FrozenClock) -> None:
    policy = tmp_path / "opa" / "intentgate"
    policy.mkdir(parents=True)
    # a real policy that answers off-contract: the gateway must not read it as an allow
    (policy / "decision.rego").write_text('package intentgate\n\ndecision := "allow everything"\n')
    config = load_config(None, data_dir=tmp_path / "var", intents_dir=INTENTS_DIR, policy_dir=policy.parent)
    rt = await Runtime.open(config, clock=clock)
    try:
        with pytest.raises(TaskError) as exc:  # beginning a task asks the policy too
            await begin_refund(rt)
        assert exc.value.code is ReasonCode.POLICY_ERROR
        assert (await rt.store.get_decision(exc.value.decision_id)).reasons == ["policy_error"]
        # a task begun while the policy still worked
        task_id = "tsk_before_the_edit"
        await rt.store.begin_task(
            Task(id=task_id, intent="refund-order", intent_version="4", agent=SUPPORT.id, params=REFUND_PARAMS,
                 reason="x", created_at=MONDAY_10, expires_at=MONDAY_10 + 900, issuer="orchestrator"),
            DecisionRecord(id="dec_before_the_edit", at=MONDAY_10, kind="task/begin", agent=SUPPORT.id,
                           outcome="allow", reasons=[], task_id=task_id))
        v = await rt.decider.decide(call(task_id, "read_ticket", "tickets.get_ticket", {"ticket_id": "TCK-1"}))
        assert v.outcome == "deny" and v.reasons == ["policy_error"] and v.token is None
        assert (await rt.store.get_decision(v.decision_id)).reasons == ["policy_error"]
        assert (await rt.store.get_task(task_id)).history == []
    finally:
        await rt.aclose()


async def test_store_failure_fails_closed(rt: Runtime) -> None:
    task_id = await begin_refund(rt)
    rt.store.db.close()  # the database goes away under the gateway
    v = await rt.decider.decide(call(task_id, "read_ticket", "tickets.get_ticket", {"ticket_id": "TCK-1"}))
    assert v.outcome == "deny" and v.reasons == ["store_error"] and v.token is None
    assert v.recorded is False


async def test_arguments_can_be_kept_out_of_the_audit_log(tmp_path: Path, clock: FrozenClock) -> None:
    config = load_config(None, data_dir=tmp_path, intents_dir=INTENTS_DIR, policy_dir=POLICY_DIR,
                         audit={"arguments": False})
    rt = await Runtime.open(config, clock=clock)
    try:
        task_id = await begin_refund(rt)
        v = await rt.decider.decide(call(task_id, "read_ticket", "tickets.get_ticket", {"ticket_id": "TCK-1"}))
        assert v.outcome == "allow"  # the policy still saw the real arguments
        stored = await rt.store.get_decision(v.decision_id)
        assert stored.arguments is None and stored.arguments_sha256
        assert stored.policy_input["call"]["arguments"] == {"ticket_id": "<redacted>"}
        assert rt.store.verify_chain().ok
    finally:
        await rt.aclose()


async def test_a_token_the_caller_forwards_itself_is_burnt_with_the_decision(rt: Runtime) -> None:
    """burn_on_commit (the MCP front): one transaction records the allow and the consumed token,
    so the token can never be presented anywhere, even if the forward never happens."""
    task_id = await begin_refund(rt)
    req = call(task_id, "read_ticket", "tickets.get_ticket", {"ticket_id": "TCK-1"}).model_copy(
        update={"burn_on_commit": True})
    v = await rt.decider.decide(req)
    assert v.outcome == "allow" and v.token is not None
    row = await rt.store.get_token(v.token.jti)
    assert row.status == "consumed" and row.consumed_at is not None
    with pytest.raises(TokenError) as exc:
        await rt.verifier.verify_and_consume(v.token.token, tool="tickets.get_ticket",
                                             arguments={"ticket_id": "TCK-1"}, audience="tickets", ledger=rt.store)
    assert exc.value.code is ReasonCode.TOKEN_REPLAYED
    # without the flag (POST /v1/decide) the token stays issued until someone redeems it
    v = await rt.decider.decide(call(task_id, "lookup", "orders.get_order", {"order_id": "ORD-7"}))
    assert (await rt.store.get_token(v.token.jti)).status == "issued"
