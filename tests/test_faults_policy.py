"""Fail closed when the policy engine fails, and recover when it is fixed, without a restart.

The embedded engine runs a copy of the project's policy with one extra module whose
behaviour a data document (``data.fault``) switches: a loop beyond the VM's instruction
limit (the engine raises), or a slow evaluation beyond ``policy.timeout_seconds``.  The OPA
engine talks to a real OPA server that is stopped or killed and comes back empty (a restarted
sidecar), forgets the policy while connected, loops past the deadline or fails to evaluate.  Every faulty call must be a recorded ``policy_error`` deny with
no token and no step taken, and the call after the fault clears must be allowed.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from intentgate.clock import FrozenClock
from intentgate.config import load_config
from intentgate.decide import Verdict
from intentgate.runtime import Runtime
from tests.conftest import INTENTS_DIR, POLICY_DIR
from tests.opa import OpaProcess
from tests.test_decide import MONDAY_10, begin_refund, call

POLICY_TIMEOUT = 0.25

FAULT_REGO = """# Fault injection for tests/test_faults_policy.py: data.fault.mode picks the fault.
package intentgate

import rego.v1

# a loop far beyond the VM's instruction limit: the evaluation raises
deny contains "fault_loop" if {
	data.fault.mode == "loop"
	count([x | some x in numbers.range(1, 1000000); x % 7 == 3]) < 0
}

# a million iterations without building a collection: seconds on OPA, which has no instruction limit
deny contains "fault_spin" if {
	data.fault.mode == "spin"
	some i in numbers.range(1, 1000)
	some j in numbers.range(1, 1000)
	i * j == -1
}

# two answers for one complete rule: OPA fails the evaluation (HTTP 500)
_fault_conflict := 1 if data.fault.mode == "conflict"

_fault_conflict := 2 if data.fault.mode == "conflict"

deny contains "fault_conflict" if _fault_conflict == 3

# a few instructions, each slow: the evaluation answers (allow), but late
deny contains "fault_slow" if {
	data.fault.mode == "slow"
	some i in numbers.range(1, 200)
	count(replace(data.fault.blob, "x", "yy")) < 0
}
"""

STEPS = [
    ("read_ticket", "tickets.get_ticket", {"ticket_id": "TCK-1"}),
    ("lookup", "orders.get_order", {"order_id": "ORD-7"}),
    ("refund", "payments.refund", {"order_id": "ORD-7", "amount": 30, "currency": "EUR"}),
]


def set_fault(policy_dir: Path, mode: str) -> None:
    doc: dict[str, Any] = {"mode": mode}
    if mode == "slow":
        doc["blob"] = "x" * 1_000_000  # 200 replacements of 1 MB: far beyond the timeout
    (policy_dir / "fault" / "data.json").write_text(json.dumps(doc))


@pytest.fixture
def faulty_policy(tmp_path: Path) -> Path:
    policy_dir = tmp_path / "opa"
    shutil.copytree(POLICY_DIR, policy_dir)
    (policy_dir / "intentgate" / "faults.rego").write_text(FAULT_REGO)
    (policy_dir / "fault").mkdir()
    set_fault(policy_dir, "none")
    return policy_dir


async def open_runtime(tmp_path: Path, policy_dir: Path, **policy: Any) -> Runtime:
    config = load_config(
        None, data_dir=tmp_path / "var", intents_dir=INTENTS_DIR, policy_dir=policy_dir,
        policy={"timeout_seconds": POLICY_TIMEOUT, **policy},
    )
    return await Runtime.open(config, clock=FrozenClock(MONDAY_10))


async def assert_policy_error(rt: Runtime, task_id: str, v: Verdict, steps_taken: int) -> None:
    """Denied, no token, recorded as policy_error, the task did not move."""
    assert v.outcome == "deny" and v.reasons == ["policy_error"], v
    assert v.token is None and not v.forward and v.recorded
    stored = await rt.store.get_decision(v.decision_id)
    assert stored is not None and stored.outcome == "deny" and stored.reasons == ["policy_error"]
    assert stored.token_jti is None
    assert len((await rt.store.get_task(task_id)).history) == steps_taken


async def assert_allowed(rt: Runtime, v: Verdict) -> None:
    assert v.outcome == "allow" and v.token is not None, v
    stored = await rt.store.get_decision(v.decision_id)
    assert stored.outcome == "allow" and stored.token_jti == v.token.jti


async def assert_recovers(rt: Runtime, task_id: str, step: tuple[str, str, dict[str, Any]], steps_taken: int) -> None:
    """The same call, repeated, is allowed again within a few seconds, without a restart.

    OPA may still be busy with the faulty evaluation, or compiling the fixed policy on a
    loaded machine, when the first call after the fix arrives; until the upload is done every
    call must be a recorded ``policy_error`` deny that moves nothing.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while True:
        v = await rt.decider.decide(call(task_id, *step))
        if v.outcome == "allow" or loop.time() > deadline:
            break
        await assert_policy_error(rt, task_id, v, steps_taken=steps_taken)
        await asyncio.sleep(0.1)
    await assert_allowed(rt, v)


async def test_embedded_policy_that_raises_or_is_slow_denies_then_recovers(tmp_path: Path, faulty_policy: Path) -> None:
    rt = await open_runtime(tmp_path, faulty_policy)
    try:
        task_id = await begin_refund(rt)
        step, tool, args = STEPS[0]
        await assert_allowed(rt, await rt.decider.decide(call(task_id, step, tool, args)))
        step, tool, args = STEPS[1]
        for mode in ("loop", "slow"):
            set_fault(faulty_policy, mode)  # a broken policy is deployed; the engine reloads it
            assert await rt.policy.reload_if_changed(force=True)
            v = await rt.decider.decide(call(task_id, step, tool, args))
            await assert_policy_error(rt, task_id, v, steps_taken=1)
        set_fault(faulty_policy, "none")  # the fix is deployed: the same call goes through
        assert await rt.policy.reload_if_changed(force=True)
        await assert_allowed(rt, await rt.decider.decide(call(task_id, step, tool, args)))
        assert len((await rt.store.get_task(task_id)).history) == 2
        assert rt.store.verify_chain().ok
    finally:
        await rt.aclose()


# ----- the OPA engine, on a real OPA server ---------------------------------------------------------


@pytest.fixture
def opa_server(tmp_path: Path) -> Iterator[OpaProcess]:
    server = OpaProcess(tmp_path / "opa-server").start()
    yield server
    server.stop()


@pytest.fixture
async def opa_rt(tmp_path: Path, opa_server: OpaProcess, faulty_policy: Path) -> AsyncIterator[Runtime]:
    rt = await open_runtime(tmp_path, faulty_policy, engine="opa", url=opa_server.url)
    yield rt
    await rt.aclose()


def _pushed(server: OpaProcess) -> set[str]:
    with httpx2.Client(base_url=server.url, timeout=5) as opa:
        return {p["id"] for p in opa.get("/v1/policies").json()["result"]}


@pytest.mark.opa
@pytest.mark.parametrize("how", ["stopped", "killed"])
async def test_opa_down_denies_and_a_restarted_opa_gets_the_policy_again(
    opa_rt: Runtime, opa_server: OpaProcess, how: str
) -> None:
    rt = opa_rt
    task_id = await begin_refund(rt)
    await assert_allowed(rt, await rt.decider.decide(call(task_id, *STEPS[0])))
    assert _pushed(opa_server) == {"intentgate/intentgate"}  # one module per package
    step, tool, args = STEPS[1]

    opa_server.stop() if how == "stopped" else opa_server.kill()  # connection refused
    v = await rt.decider.decide(call(task_id, step, tool, args))
    await assert_policy_error(rt, task_id, v, steps_taken=1)

    opa_server.start()  # the sidecar comes back on the same port, without the policy
    assert _pushed(opa_server) == set()
    await assert_allowed(rt, await rt.decider.decide(call(task_id, step, tool, args)))
    assert _pushed(opa_server) == {"intentgate/intentgate"}  # pushed again before the query


@pytest.mark.opa
async def test_opa_that_forgot_the_policy_unseen_denies_once_then_gets_it_again(
    opa_rt: Runtime, opa_server: OpaProcess
) -> None:
    """An OPA that lost the policy without the engine seeing a refused connection (restarted
    behind a proxy, or its policies deleted): the query answers undefined, which denies; the
    engine then looks, finds its modules gone, and pushes them before the next query."""
    rt = opa_rt
    task_id = await begin_refund(rt)
    await assert_allowed(rt, await rt.decider.decide(call(task_id, *STEPS[0])))
    with httpx2.Client(base_url=opa_server.url, timeout=5) as opa:
        for policy_id in _pushed(opa_server):  # what a restart forgets, while the engine is connected
            assert opa.delete(f"/v1/policies/{policy_id}").status_code == 200
    v = await rt.decider.decide(call(task_id, *STEPS[1]))
    await assert_policy_error(rt, task_id, v, steps_taken=1)
    await assert_allowed(rt, await rt.decider.decide(call(task_id, *STEPS[1])))
    assert _pushed(opa_server) == {"intentgate/intentgate"}


@pytest.mark.opa
@pytest.mark.parametrize("fault", ["spin", "conflict"])
async def test_opa_slow_or_failing_denies_then_recovers(
    opa_rt: Runtime, opa_server: OpaProcess, faulty_policy: Path, fault: str
) -> None:
    """``spin``: a policy that loops for seconds on OPA (no instruction limit there), answered
    after the engine's deadline; ``conflict``: one that OPA fails to evaluate (HTTP 500)."""
    rt = opa_rt
    task_id = await begin_refund(rt)
    await assert_allowed(rt, await rt.decider.decide(call(task_id, *STEPS[0])))
    set_fault(faulty_policy, fault)
    assert await rt.policy.reload_if_changed(force=True)
    v = await rt.decider.decide(call(task_id, *STEPS[1]))
    await assert_policy_error(rt, task_id, v, steps_taken=1)
    set_fault(faulty_policy, "none")
    assert await rt.policy.reload_if_changed(force=True)
    await assert_recovers(rt, task_id, STEPS[1], steps_taken=1)
    await assert_allowed(rt, await rt.decider.decide(call(task_id, *STEPS[2])))
    assert len((await rt.store.get_task(task_id)).history) == 3
    assert rt.store.verify_chain().ok


async def test_a_slow_policy_denies_reads_too(tmp_path: Path, faulty_policy: Path) -> None:
    """resources/read goes through the same deadline: a late answer is a policy_error deny."""
    from intentgate.reads import ReadRequest, decide_read
    from tests.test_decide import SUPPORT

    rt = await open_runtime(tmp_path, faulty_policy)
    read = ReadRequest(agent=SUPPORT, action="resources/read", upstream="tickets", name="tickets://TCK-1")
    try:
        assert (await decide_read(rt.decider, read)).outcome == "allow"
        set_fault(faulty_policy, "slow")
        assert await rt.policy.reload_if_changed(force=True)
        v = await decide_read(rt.decider, read)
        assert v.outcome == "deny" and v.reasons == ["policy_error"], v
        stored = await rt.store.get_decision(v.decision_id)
        assert stored is not None and stored.kind == "resources/read" and stored.reasons == ["policy_error"]
        set_fault(faulty_policy, "none")
        assert await rt.policy.reload_if_changed(force=True)
        assert (await decide_read(rt.decider, read)).outcome == "allow"
    finally:
        await rt.aclose()
