"""Reviewer actions over REST on the real app: approvals, break-glass grants, what-if replay.

The store is filled by the real pipeline (see test_review_api); the agent's side of each story
(the retry after an approval, a call under a grant) runs through a real Runtime on the same
database.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from intentgate.clock import FrozenClock
from intentgate.runtime import Runtime
from tests.conftest import strict_refund_policy
from tests.test_review_api import HOUR, MONDAY_10, SUPPORT, Env, _call, admin_token, agent_token, env  # noqa: F401
from tests.tasks import ISSUER

HELD = {"order_id": "ORD-7", "amount": 1800, "currency": "EUR"}
OVER = {"order_id": "ORD-7", "amount": 4000, "currency": "EUR"}


def post(env: Env, path: str, body: Any = None, token: str | None = "admin") -> Any:
    if token == "admin":
        token = admin_token(env.config)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return env.client.post(path, json=body, headers=headers)


def as_agent(env: Env, fn) -> Any:
    """Run ``fn(runtime)`` as the agent would, on the same database, an hour after the fill."""

    async def run() -> Any:
        rt = await Runtime.open(env.config, clock=FrozenClock(MONDAY_10 + HOUR + 60))
        try:
            return await fn(rt)
        finally:
            await rt.aclose()

    return asyncio.run(run())


def test_actions_need_a_reviewer(env: Env) -> None:
    for method, path in [("get", "/v1/approvals"), ("post", "/v1/approvals/apr_x/approve"),
                         ("post", "/v1/approvals/apr_x/reject"), ("get", "/v1/grants"), ("post", "/v1/grants"),
                         ("post", "/v1/grants/grt_x/sign-off"), ("post", "/v1/grants/grt_x/revoke"),
                         ("post", "/v1/replay")]:
        for token, status in [(None, 401), (agent_token(env.config), 403)]:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            r = env.client.request(method.upper(), path, headers=headers, json={})
            assert r.status_code == status, (method, path, r.text)


def test_approve_once_then_the_agents_identical_retry_is_allowed_once(env: Env) -> None:
    r = env.get("/v1/approvals")
    assert r.status_code == 200
    queue = r.json()["approvals"]
    assert [a["decision_id"] for a in queue] == [env.filled["b_hold"]]
    held = queue[0]
    assert held["agent"] == SUPPORT.id and held["task_id"] == env.filled.task_b and held["status"] == "pending"

    r = post(env, f"/v1/approvals/{held['id']}/approve", {"note": "customer verified by phone"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "approved" and r.json()["decided_by"] == "alice"
    assert post(env, f"/v1/approvals/{held['id']}/approve").status_code == 409
    assert post(env, f"/v1/approvals/{held['id']}/reject").json()["detail"]["message"] == "already approved"
    assert post(env, "/v1/approvals/apr_unknown/approve").status_code == 404
    assert env.get("/v1/approvals").json()["approvals"] == []

    async def retry(rt: Runtime) -> list:
        other = await rt.decider.decide(_call(env.filled.task_b, "refund", "payments.refund", {**HELD, "amount": 2400}))
        same = await rt.decider.decide(_call(env.filled.task_b, "refund", "payments.refund", HELD))
        return [other, same]

    other, same = as_agent(env, retry)
    assert other.outcome == "hold"  # other arguments: not what was approved
    assert same.outcome == "allow" and same.reasons == [f"approved:{held['id']}"] and same.token is not None
    used = env.get("/v1/approvals", status="any").json()["approvals"]
    assert {a["id"]: a["status"] for a in used}[held["id"]] == "used"


def test_reject_keeps_the_call_held(env: Env) -> None:
    held = env.get("/v1/approvals").json()["approvals"][0]
    r = post(env, f"/v1/approvals/{held['id']}/reject", {"note": "no"})
    assert r.status_code == 200 and r.json()["status"] == "rejected"
    verdict = as_agent(env, lambda rt: rt.decider.decide(_call(env.filled.task_b, "refund", "payments.refund", HELD)))
    assert verdict.outcome == "hold" and verdict.approval_id != held["id"]


def test_break_glass_grant_is_used_flagged_and_signed_off(env: Env) -> None:
    body = {"agent": SUPPORT.id, "tool": "payments.refund", "reason": "incident INC-7: refunds stuck",
            "duration_seconds": 900}
    for bad in [{**body, "duration_seconds": 30 * 24 * 3600}, {**body, "intent": "refund-order"},
                {k: v for k, v in body.items() if k != "tool"}, {**body, "reason": ""}]:
        assert post(env, "/v1/grants", bad).status_code == 422, bad
    r = post(env, "/v1/grants", body)
    assert r.status_code == 201, r.text
    grant = r.json()
    assert grant["active"] and grant["uses"] == 0 and grant["created_by"] == "alice"

    async def over_limit(rt: Runtime):
        started = await rt.decider.begin_task(SUPPORT, "refund-order", {"ticket_id": "TCK-1", "order_id": "ORD-7"},
                                              "incident", issuer=ISSUER)
        for step, tool, args in [("read_ticket", "tickets.get_ticket", {"ticket_id": "TCK-1"}),
                                 ("lookup", "orders.get_order", {"order_id": "ORD-7"})]:
            await rt.decider.decide(_call(started.task_id, step, tool, args))
        return await rt.decider.decide(_call(started.task_id, "refund", "payments.refund", OVER))

    # the grant's clock is the real one: use it while it is active
    verdict = asyncio.run(_with_real_clock(env, over_limit))
    assert verdict.outcome == "allow" and verdict.reasons[0] == f"break_glass:{grant['id']}"
    listed = env.get("/v1/grants", needs_review=True).json()["grants"]
    assert [(g["id"], g["uses"], g["last_used_decision"]) for g in listed] == [
        (grant["id"], 1, verdict.decision_id)]
    flagged = env.ids(reason="break_glass")
    assert flagged == [verdict.decision_id]

    r = post(env, f"/v1/grants/{grant['id']}/sign-off", {"note": "reviewed with the payments team"})
    assert r.status_code == 200 and r.json()["signed_off_by"] == "alice"
    assert post(env, f"/v1/grants/{grant['id']}/sign-off").status_code == 409
    assert env.get("/v1/grants", needs_review=True).json()["grants"] == []
    r = post(env, f"/v1/grants/{grant['id']}/revoke")
    assert r.status_code == 200 and r.json()["active"] is False
    assert post(env, f"/v1/grants/{grant['id']}/revoke").status_code == 409
    assert post(env, "/v1/grants/grt_nope/sign-off").status_code == 404


async def _with_real_clock(env: Env, fn) -> Any:
    rt = await Runtime.open(env.config)
    try:
        return await fn(rt)
    finally:
        await rt.aclose()


def test_replay_reports_what_a_candidate_policy_would_change(env: Env, tmp_path: Path) -> None:
    recorded = env.ids()
    r = post(env, "/v1/replay", {})
    assert r.status_code == 200, r.text
    same = r.json()
    assert same["transitions"] == {} and same["changes"] == [] and same["checked"] > 10

    candidate = strict_refund_policy(tmp_path)
    r = post(env, "/v1/replay", {"policy_dir": str(candidate)})
    report = r.json()
    assert r.status_code == 200 and report["allow_to_deny"] == 1  # task A's 30 EUR refund
    change = {c["decision_id"]: c for c in report["changes"]}[env.filled["a_refund"]]
    assert change["before"] == "allow" and change["after"] == "deny"
    assert report["transitions"]["hold->deny"] == 1  # task B's held refund

    one = post(env, "/v1/replay", {"decision_id": env.filled["a_refund"], "policy_dir": str(candidate)}).json()
    assert one["checked"] == 1 and one["allow_to_deny"] == 1
    assert post(env, "/v1/replay", {"decision_id": "dec_nope"}).status_code == 404
    assert post(env, "/v1/replay", {"policy_dir": str(tmp_path / "missing")}).status_code == 422
    assert env.ids() == recorded  # nothing was written
