"""Fail closed when the policy engine fails, and recover when it is fixed, without a restart.

The embedded engine runs a copy of the project's policy with one extra module whose
behaviour a data document (``data.fault``) switches: a loop beyond the VM's instruction
limit (the engine raises), or a slow evaluation beyond ``policy.timeout_seconds``.  The OPA
engine talks to a stand-in HTTP server that goes down, comes back empty (a restarted
sidecar), or answers late.  Every faulty call must be a recorded ``policy_error`` deny with
no token and no step taken, and the call after the fault clears must be allowed.
"""

from __future__ import annotations

import http.server
import json
import shutil
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.clock import FrozenClock
from gateway.config import load_config
from gateway.decide import Verdict
from gateway.runtime import Runtime
from tests.conftest import INTENTS_DIR, POLICY_DIR
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


# ----- the OPA engine --------------------------------------------------------------------------


class _StandInOpa(http.server.BaseHTTPRequestHandler):
    """Test double for an OPA server, which cannot run on this machine (no OPA binary can be
    installed here).  It does not evaluate Rego.  It keeps what the engine pushes in memory,
    as OPA does without bundles, so a restart forgets it; a query against a server without
    the policy answers ``{}`` (undefined), as OPA does; with the policy it answers a canned
    decision (allow exactly when ``input.workflow.ok``).  ``mode`` makes it answer late
    (``slow``) or fail (``http_500``).  What is under test is the gateway's handling of the
    transport and of OPA's state, not policy semantics."""

    mode = "ok"
    policies: dict[str, str]
    queries: list[str]

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        path = self.path
        if self.command == "GET" and path == "/v1/policies/":
            return self._json(200, {"result": [{"id": p} for p in self.policies]})
        if self.command == "PUT" and path.startswith("/v1/policies/"):
            self.policies[path.removeprefix("/v1/policies/")] = body
            return self._json(200, {})
        if self.command == "DELETE" and path.startswith("/v1/policies/"):
            self.policies.pop(path.removeprefix("/v1/policies/"), None)
            return self._json(200, {})
        if self.command == "PUT" and path.startswith("/v1/data/"):
            self.send_response(204)
            self.end_headers()
            return None
        if self.command == "POST" and path == "/v1/data/intentgate/decision":
            self.queries.append(self.mode)
            if self.mode == "slow":
                time.sleep(POLICY_TIMEOUT * 4)
            if self.mode == "http_500":
                return self._json(500, {"code": "internal_error", "message": "boom"})
            if not self.policies:
                return self._json(200, {})
            ok = json.loads(body)["input"]["workflow"]["ok"] is True
            return self._json(200, {"result": {"allow": ok, "reasons": [], "hold": False, "ttl_seconds": 30}})
        return self._json(404, {"code": "resource_not_found"})

    def _json(self, status: int, doc: Any) -> None:
        raw = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    do_GET = do_PUT = do_POST = do_DELETE = _answer


class StandIn:
    """Starts, stops and restarts the stand-in on one port (a restart begins empty)."""

    def __init__(self) -> None:
        self.port = 0
        self.handler: type[_StandInOpa] | None = None
        self._server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> None:
        self.handler = type("Handler", (_StandInOpa,), {"policies": {}, "queries": []})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self.handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def opa() -> Iterator[StandIn]:
    stand_in = StandIn()
    stand_in.start()
    yield stand_in
    stand_in.stop()


@pytest.fixture
async def opa_rt(tmp_path: Path, opa: StandIn) -> AsyncIterator[Runtime]:
    rt = await open_runtime(tmp_path, POLICY_DIR, engine="opa", url=opa.url)
    yield rt
    await rt.aclose()


async def test_opa_down_denies_and_a_restarted_opa_gets_the_policy_again(opa_rt: Runtime, opa: StandIn) -> None:
    rt = opa_rt
    task_id = await begin_refund(rt)
    await assert_allowed(rt, await rt.decider.decide(call(task_id, *STEPS[0])))
    assert opa.handler is not None and opa.handler.policies  # the engine pushed the policy
    step, tool, args = STEPS[1]

    opa.stop()  # connection refused
    v = await rt.decider.decide(call(task_id, step, tool, args))
    await assert_policy_error(rt, task_id, v, steps_taken=1)

    opa.start()  # the sidecar comes back on the same port, without the policy
    assert not opa.handler.policies
    await assert_allowed(rt, await rt.decider.decide(call(task_id, step, tool, args)))
    assert opa.handler.policies  # pushed again before the query
    assert opa.handler.queries == ["ok"]


@pytest.mark.parametrize("fault", ["slow", "http_500"])
async def test_opa_slow_or_failing_denies_then_recovers(opa_rt: Runtime, opa: StandIn, fault: str) -> None:
    rt = opa_rt
    task_id = await begin_refund(rt)
    await assert_allowed(rt, await rt.decider.decide(call(task_id, *STEPS[0])))
    assert opa.handler is not None
    opa.handler.mode = fault
    v = await rt.decider.decide(call(task_id, *STEPS[1]))
    await assert_policy_error(rt, task_id, v, steps_taken=1)
    opa.handler.mode = "ok"
    await assert_allowed(rt, await rt.decider.decide(call(task_id, *STEPS[1])))
    await assert_allowed(rt, await rt.decider.decide(call(task_id, *STEPS[2])))
    assert opa.handler.queries == ["ok", fault, "ok", "ok"]


async def test_a_slow_policy_denies_reads_too(tmp_path: Path, faulty_policy: Path) -> None:
    """resources/read goes through the same deadline: a late answer is a policy_error deny."""
    from gateway.reads import ReadRequest, decide_read
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
