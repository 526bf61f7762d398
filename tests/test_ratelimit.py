"""Per-agent rate limiting: token buckets on the injected clock, refusals recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from intentgate.clock import FrozenClock
from intentgate.config import load_config
from intentgate.errors import ReasonCode, TaskError
from intentgate.ratelimit import RateLimiter
from intentgate.reads import ReadRequest, decide_read
from intentgate.runtime import Runtime
from tests.conftest import INTENTS_DIR, POLICY_DIR
from tests.test_decide import MONDAY_10, OTHER, REFUND_PARAMS, SUPPORT, call
from tests.tasks import ISSUER

READ = {"ticket_id": "TCK-1"}


def test_bucket_allows_a_burst_then_the_rate() -> None:
    clock = FrozenClock(MONDAY_10)
    limiter = RateLimiter(2.0, 3, clock)
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b")  # another agent has its own bucket
    clock.advance(1.0)  # two tokens back
    assert [limiter.allow("a") for _ in range(3)] == [True, True, False]
    clock.advance(60)  # never more than the burst
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    with pytest.raises(ValueError):
        RateLimiter(0, 1, clock)


def test_wait_says_when_the_next_call_is_allowed() -> None:
    clock = FrozenClock(MONDAY_10)
    limiter = RateLimiter(0.5, 1, clock)
    assert limiter.wait("a") == 0.0  # a fresh bucket is full
    assert limiter.allow("a") and not limiter.allow("a")
    assert limiter.wait("a") == pytest.approx(2.0)
    clock.advance(1.5)
    assert limiter.wait("a") == pytest.approx(0.5)
    clock.advance(0.5)
    assert limiter.wait("a") == 0.0 and limiter.allow("a")


def test_bucket_memory_is_bounded() -> None:
    limiter = RateLimiter(1.0, 1, FrozenClock(MONDAY_10), max_agents=10)
    for i in range(50):
        limiter.allow(f"agent-{i}")
    assert len(limiter._buckets) == 10


@pytest.fixture
async def rt(tmp_path: Path):
    config = load_config(None, data_dir=tmp_path, intents_dir=INTENTS_DIR, policy_dir=POLICY_DIR,
                         front={"rate_limit_per_second": 1, "rate_limit_burst": 3})
    runtime = await Runtime.open(config, clock=FrozenClock(MONDAY_10))
    yield runtime
    await runtime.aclose()


async def test_calls_over_the_limit_are_refused_and_recorded(rt: Runtime) -> None:
    # the agent begins a task itself (lookup-order lets it): that counts against its rate
    started = await rt.decider.begin_task(SUPPORT, "lookup-order", REFUND_PARAMS, "x")  # token 1
    first = await rt.decider.decide(call(started.task_id, "read_ticket", "tickets.get_ticket", READ))  # 2
    assert first.outcome == "allow"
    await rt.decider.decide(call(started.task_id, "lookup", "orders.get_order", {"order_id": "ORD-7"}))  # 3
    limited = await rt.decider.decide(call(started.task_id, "lookup", "orders.get_order", {"order_id": "ORD-7"}))
    assert limited.outcome == "deny" and limited.reasons == ["rate_limited"] and limited.token is None
    assert "retry later" in limited.explanation
    record = await rt.store.get_decision(limited.decision_id)
    assert record.reasons == ["rate_limited"] and record.arguments is None and record.masked == ["/arguments"]
    read = await decide_read(rt.decider, ReadRequest(agent=SUPPORT, action="resources/read", upstream="tickets",
                                                     name="tickets://TCK-1"))
    assert read.reasons == ["rate_limited"]
    with pytest.raises(TaskError) as refused:
        await rt.decider.begin_task(SUPPORT, "lookup-order", REFUND_PARAMS, "again")
    assert refused.value.code is ReasonCode.RATE_LIMITED
    # a task issuer's begins count against the issuer, not against the agent it begins for
    assert (await rt.decider.begin_task(SUPPORT, "refund-order", REFUND_PARAMS, "x", issuer=ISSUER)).task_id
    # another agent is not slowed down by this one
    other = await rt.decider.begin_task(OTHER, "refund-order", REFUND_PARAMS, "x", issuer=ISSUER)
    assert other.task_id
    rt.clock.advance(1.0)  # one more token for SUPPORT
    again = await rt.decider.decide(call(started.task_id, "lookup", "orders.get_order", {"order_id": "ORD-7"}))
    assert again.reasons != ["rate_limited"]


async def test_no_limit_when_disabled(tmp_path: Path) -> None:
    config = load_config(None, data_dir=tmp_path, intents_dir=INTENTS_DIR, policy_dir=POLICY_DIR,
                         front={"rate_limit_per_second": None})
    runtime = await Runtime.open(config, clock=FrozenClock(MONDAY_10))
    try:
        started = await runtime.decider.begin_task(SUPPORT, "refund-order", REFUND_PARAMS, "x", issuer=ISSUER)
        verdicts = [await runtime.decider.decide(call(started.task_id, "nope", "tickets.get_ticket", READ))
                    for _ in range(300)]
        assert all(v.reasons != ["rate_limited"] for v in verdicts)
    finally:
        await runtime.aclose()
