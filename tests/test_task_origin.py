"""Who may begin a task: task issuers, task grants, policy on task start, and scoped break-glass.

The decision core on real stores (SQLite and PostgreSQL), the real Rego policy and real
EdDSA signatures.  Three attacks from an outside review, each refused here and let through
by the gateway before task issuers existed:

- a support agent refused an e-mail under ``refund-order`` begins ``triage-ticket`` itself
  with ``customer_email=ops@evil.example`` (its notify step would mail the attacker);
- a refund held above the threshold, split into two tasks below it;
- a break-glass grant on ``refund-order`` used for ``secrets.rotate_credential`` and
  ``email.send`` under made-up steps, and to skip an ``approval: required`` step.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from intentgate.clock import FrozenClock
from intentgate.config import load_config
from intentgate.errors import ReasonCode, TaskError
from intentgate.identity import AgentIdentity
from intentgate.keys import KeySet, public_jwk
from intentgate.runtime import Runtime
from intentgate.store import GrantRecord
from intentgate.tasks import GRANT_SCOPE, TASK_GRANT_TYP, TaskGrantMinter, TaskIssuer
from tests.conftest import INTENTS_DIR, POLICY_DIR
from tests.tasks import ISSUER
from tests.test_decide import MONDAY_10, OPS, REFUND_PARAMS, SUPPORT, call, walk_to_refund
from tests.test_decide import clock, rt  # noqa: F401 - shared fixtures

EVIL = "ops@evil.example"
TRIAGE = {"ticket_id": "TCK-1", "customer_email": EVIL}


async def open_rt(tmp_path: Path, db_url: str, clock: FrozenClock, **config: Any) -> Runtime:
    cfg = load_config(None, data_dir=tmp_path, intents_dir=config.pop("intents_dir", INTENTS_DIR),
                      policy_dir=config.pop("policy_dir", POLICY_DIR), **config)
    cfg = cfg.model_copy(update={"store": cfg.store.model_copy(update={"url": db_url})})
    return await Runtime.open(cfg, clock=clock)


async def refused(coro: Any) -> TaskError:
    with pytest.raises(TaskError) as exc:
        await coro
    return exc.value


# ----- who may begin ----------------------------------------------------------------------------


async def test_attack_an_agent_cannot_begin_the_task_that_would_mail_the_attacker(rt: Runtime) -> None:
    err = await refused(rt.decider.begin_task(SUPPORT, "triage-ticket", TRIAGE, "follow up with the customer"))
    assert err.code is ReasonCode.TASK_ISSUER_REQUIRED
    stored = await rt.store.get_decision(err.decision_id)
    assert stored.kind == "task/begin" and stored.outcome == "deny" and stored.reasons == ["task_issuer_required"]
    assert stored.policy_input["action"] == "task/begin" and stored.policy_input["issuer"] is None
    assert stored.policy_input["params"] == TRIAGE  # reviewers see what the agent tried
    assert await rt.store.open_tasks(SUPPORT.id, "triage-ticket", MONDAY_10) == 0


async def test_attack_a_held_refund_cannot_be_split_into_tasks_the_agent_begins(rt: Runtime) -> None:
    task = (await rt.decider.begin_task(SUPPORT, "refund-order", REFUND_PARAMS, "refund", issuer=ISSUER)).task_id
    await walk_to_refund(rt, task)
    held = await rt.decider.decide(call(task, "refund", "payments.refund",
                                        {"order_id": "ORD-7", "amount": 1800, "currency": "EUR"}))
    assert held.outcome == "hold" and "policy:large_refund" in held.reasons
    for _ in range(2):  # two halves below the threshold, each in a task of the agent's own
        err = await refused(rt.decider.begin_task(SUPPORT, "refund-order", REFUND_PARAMS, "split it"))
        assert err.code is ReasonCode.TASK_ISSUER_REQUIRED
    assert await rt.store.open_tasks(SUPPORT.id, "refund-order", MONDAY_10) == 1


async def test_an_issuer_begins_a_task_that_belongs_to_the_agent(rt: Runtime) -> None:
    started = await rt.decider.begin_task(SUPPORT, "refund-order", REFUND_PARAMS, "queue", issuer=ISSUER)
    assert started.agent == SUPPORT.id and started.issuer == f"orchestrator:{ISSUER.principal}"
    task = await rt.store.get_task(started.task_id)
    assert task.agent == SUPPORT.id and task.issuer == started.issuer
    begun = await rt.store.get_decision(started.decision_id)
    assert begun.policy_input["issuer"] == {"name": "orchestrator", "id": ISSUER.principal, "via": "rest"}
    assert begun.policy_result["allow"] is True
    v = await rt.decider.decide(call(started.task_id, "read_ticket", "tickets.get_ticket", {"ticket_id": "TCK-1"}))
    assert v.outcome == "allow"
    assert (await rt.store.get_decision(v.decision_id)).policy_input["task"]["issuer"] == started.issuer
    other = AgentIdentity(id="spiffe://example.org/agent/support-2")  # the task is SUPPORT's, not the issuer's
    v = await rt.decider.decide(call(started.task_id, "lookup", "orders.get_order", {"order_id": "ORD-7"}, other))
    assert "task_not_owned" in v.reasons


@pytest.mark.parametrize(("issuer", "intent", "agent", "params"), [
    (TaskIssuer("narrow", "spiffe://example.org/x", "rest", intents=("triage-*",)), "refund-order", SUPPORT,
     REFUND_PARAMS),
    (TaskIssuer("narrow", "spiffe://example.org/x", "rest", agents=("spiffe://example.org/agent/ops-*",)),
     "refund-order", SUPPORT, REFUND_PARAMS),
    (ISSUER, "lookup-order", SUPPORT, REFUND_PARAMS),  # the agent begins it itself; issuers may not
])
async def test_an_issuer_is_refused_what_it_may_not_begin(rt: Runtime, issuer: TaskIssuer, intent: str,
                                                        agent: AgentIdentity, params: dict) -> None:
    err = await refused(rt.decider.begin_task(agent, intent, params, "x", issuer=issuer))
    assert err.code is ReasonCode.ISSUER_NOT_PERMITTED
    stored = await rt.store.get_decision(err.decision_id)
    assert stored.reasons == [f"issuer_not_permitted:{issuer.name}"] and stored.outcome == "deny"


async def test_an_agent_begins_what_the_intent_lets_it(rt: Runtime) -> None:
    started = await rt.decider.begin_task(SUPPORT, "lookup-order", REFUND_PARAMS, "customer asks where it is")
    assert started.issuer is None and (await rt.store.get_task(started.task_id)).issuer is None


async def test_the_issuers_ttl_is_kept_within_the_intents(rt: Runtime) -> None:
    started = await rt.decider.begin_task(SUPPORT, "refund-order", REFUND_PARAMS, "x", issuer=ISSUER, ttl_seconds=60)
    assert started.expires_at == MONDAY_10 + 60
    err = await refused(rt.decider.begin_task(SUPPORT, "refund-order", REFUND_PARAMS, "x", issuer=ISSUER,
                                              ttl_seconds=901))
    assert err.code is ReasonCode.INVALID_PARAMS


async def test_intents_without_begin_follow_the_gateway_default(tmp_path: Path, clock: FrozenClock,
                                                                db_url: str) -> None:
    intents = tmp_path / "intents"
    intents.mkdir()
    text = (INTENTS_DIR / "lookup-order.yaml").read_text().replace("begin: [agent]\n", "")
    assert "begin:" not in text
    (intents / "lookup-order.yaml").write_text(text)
    for default, agent_may in ((["issuer"], False), (["agent"], True), (["issuer", "agent"], True)):
        runtime = await open_rt(tmp_path / "-".join(default), db_url, clock, intents_dir=intents,
                                tasks={"begin": default})
        try:
            assert runtime.intents.data_document()["lookup-order"]["begin"] == default  # what Rego sees
            if agent_may:
                await runtime.decider.begin_task(SUPPORT, "lookup-order", REFUND_PARAMS, "x")
            else:
                err = await refused(runtime.decider.begin_task(SUPPORT, "lookup-order", REFUND_PARAMS, "x"))
                assert err.code is ReasonCode.TASK_ISSUER_REQUIRED
        finally:
            await runtime.aclose()


async def test_the_policy_decides_task_begins_too(tmp_path: Path, clock: FrozenClock, db_url: str) -> None:
    """An organisation's rule on task start: at most two open refund tasks per agent."""
    policy = tmp_path / "opa"
    shutil.copytree(POLICY_DIR, policy)
    data = json.loads((policy / "intentgate" / "data.json").read_text())
    data["limits"]["open_tasks"] = {"refund-order": 2}
    (policy / "intentgate" / "data.json").write_text(json.dumps(data))
    runtime = await open_rt(tmp_path, db_url, clock, policy_dir=policy)
    try:
        first = await runtime.decider.begin_task(SUPPORT, "refund-order", REFUND_PARAMS, "1", issuer=ISSUER)
        await runtime.decider.begin_task(SUPPORT, "refund-order", REFUND_PARAMS, "2", issuer=ISSUER)
        err = await refused(runtime.decider.begin_task(SUPPORT, "refund-order", REFUND_PARAMS, "3", issuer=ISSUER))
        assert err.code is ReasonCode.POLICY_DENIED
        stored = await runtime.store.get_decision(err.decision_id)
        assert stored.reasons == ["policy_denied", "policy:too_many_open_tasks"]
        assert stored.policy_input["usage"]["open_tasks"] == {"refund-order": 2}
        await runtime.decider.end_task(SUPPORT, first.task_id)  # one closes: one may open
        await runtime.decider.begin_task(SUPPORT, "refund-order", REFUND_PARAMS, "4", issuer=ISSUER)
        # another agent has its own count
        await runtime.decider.begin_task(AgentIdentity(id="spiffe://example.org/agent/support-2"), "refund-order",
                                         REFUND_PARAMS, "5", issuer=ISSUER)
    finally:
        await runtime.aclose()


async def test_a_failing_policy_refuses_task_begins(tmp_path: Path, clock: FrozenClock, db_url: str) -> None:
    policy = tmp_path / "opa" / "intentgate"
    policy.mkdir(parents=True)
    (policy / "p.rego").write_text('package intentgate\n\ndecision := {"allow": true}\n')  # off-contract
    runtime = await open_rt(tmp_path, db_url, clock, policy_dir=policy.parent)
    try:
        err = await refused(runtime.decider.begin_task(SUPPORT, "refund-order", REFUND_PARAMS, "x", issuer=ISSUER))
        assert err.code is ReasonCode.POLICY_ERROR
        assert (await runtime.store.get_decision(err.decision_id)).reasons == ["policy_error"]
        assert await runtime.store.open_tasks(SUPPORT.id, "refund-order", MONDAY_10) == 0
    finally:
        await runtime.aclose()


# ----- task grants ------------------------------------------------------------------------------


def local_grant(rt: Runtime, agent: str = SUPPORT.id, intent: str = "refund-order",
                params: dict | None = None, ttl_seconds: int = 300, **kw: Any) -> str:
    minter = TaskGrantMinter(KeySet.open_or_create(rt.config.task_issuer_keys_dir), clock=rt.clock)
    return minter.mint(agent=agent, intent=intent, params=params or REFUND_PARAMS, reason="queue",
                       ttl_seconds=ttl_seconds, **kw)[0]


async def begin_from(rt: Runtime, grant: str, agent: AgentIdentity = SUPPORT) -> Any:
    verified = rt.task_issuers.verify_grant(grant, agent=agent.id)
    return await rt.decider.begin_task(agent, verified.intent, verified.params, verified.reason, grant=verified)


async def test_a_task_grant_begins_its_task_once(rt: Runtime) -> None:
    grant = local_grant(rt, task_ttl_seconds=120, requested_by="spiffe://example.org/host")
    started = await begin_from(rt, grant)
    task = await rt.store.get_task(started.task_id)
    assert task.params == REFUND_PARAMS and task.expires_at == MONDAY_10 + 120
    assert task.issuer == "local:intentgate-local:spiffe://example.org/host"
    err = await refused(begin_from(rt, grant))  # the same grant again, wherever it is presented
    assert err.code is ReasonCode.TASK_GRANT_REPLAYED
    stored = await rt.store.get_decision(err.decision_id)
    assert stored.outcome == "deny" and stored.reasons == ["task_grant_replayed"] and stored.task_id is None
    assert await rt.store.open_tasks(SUPPORT.id, "refund-order", MONDAY_10) == 1


async def test_racing_presentations_of_one_grant_begin_one_task(tmp_path: Path, clock: FrozenClock,
                                                                db_url: str) -> None:
    """Two gateways on one database (replicas), eight presentations of one grant at once."""
    a = await open_rt(tmp_path, db_url, clock)  # same keys (data_dir), same database, own connections
    b = await open_rt(tmp_path, db_url, clock)
    try:
        grant = local_grant(a)
        results = await asyncio.gather(*(begin_from(rt, grant) for rt in [a, b] * 4), return_exceptions=True)
        begun = [r for r in results if not isinstance(r, BaseException)]
        lost = [r for r in results if isinstance(r, BaseException)]
        assert len(begun) == 1, results
        assert all(isinstance(e, TaskError) and e.code is ReasonCode.TASK_GRANT_REPLAYED for e in lost), lost
        assert await a.store.open_tasks(SUPPORT.id, "refund-order", MONDAY_10) == 1
    finally:
        await a.aclose()
        await b.aclose()


def _forge(rt: Runtime, **change: Any) -> str:
    """A local grant with some claim or header changed, re-signed with the real key."""
    good = local_grant(rt)
    header, claims = jwt.get_unverified_header(good), jwt.decode(good, options={"verify_signature": False})
    header.update(change.pop("header", {}))
    claims.update(change)
    key = KeySet.open_or_create(rt.config.task_issuer_keys_dir).current
    return jwt.encode(claims, key.private, algorithm="EdDSA", headers=header)


@pytest.mark.parametrize(("make", "code"), [
    (lambda rt: local_grant(rt, agent="spiffe://example.org/agent/support-2"), ReasonCode.TASK_GRANT_AGENT),
    (lambda rt: _forge(rt, exp=MONDAY_10 - 60, iat=MONDAY_10 - 120, nbf=MONDAY_10 - 120),
     ReasonCode.TASK_GRANT_EXPIRED),
    (lambda rt: _forge(rt, header={"typ": "JWT"}), ReasonCode.INVALID_TASK_GRANT),
    (lambda rt: _forge(rt, aud="someone-else"), ReasonCode.INVALID_TASK_GRANT),
    (lambda rt: _forge(rt, scope="everything"), ReasonCode.INVALID_TASK_GRANT),
    (lambda rt: _forge(rt, exp=MONDAY_10 + 86400), ReasonCode.INVALID_TASK_GRANT),  # lives too long
    (lambda rt: _forge(rt, tctx="refund everything"), ReasonCode.INVALID_TASK_GRANT),
    (lambda rt: _forge(rt, iss="intentgate-dev"), ReasonCode.INVALID_TASK_GRANT),
    (lambda rt: local_grant(rt)[:-6] + "AAAAAA", ReasonCode.INVALID_TASK_GRANT),  # bad signature
    (lambda rt: TaskGrantMinter(KeySet.open_or_create(rt.config.data_dir / "elsewhere"), clock=rt.clock).mint(
        agent=SUPPORT.id, intent="refund-order", params=REFUND_PARAMS, reason="x")[0], ReasonCode.INVALID_TASK_GRANT),
    (lambda rt: "not-a-jwt", ReasonCode.INVALID_TASK_GRANT),
    (lambda rt: 42, ReasonCode.INVALID_TASK_GRANT),
], ids=["other-agent", "expired", "typ", "audience", "scope", "too-long", "tctx", "issuer",
        "signature", "other-key", "garbage", "not-a-string"])
async def test_bad_task_grants_are_refused_with_their_reason(rt: Runtime, make: Any, code: ReasonCode) -> None:
    grant = make(rt)
    with pytest.raises(TaskError) as exc:
        rt.task_issuers.verify_grant(grant, agent=SUPPORT.id)
    assert exc.value.code is code, exc.value.message


async def test_a_task_issuer_signs_grants_with_its_own_key(tmp_path: Path, clock: FrozenClock, db_url: str) -> None:
    private = Ed25519PrivateKey.generate()
    jwk = public_jwk(private.public_key(), "host-key-1")
    issuers = {"issuers": [{"name": "support-host", "grant_issuer": "https://host.example.org",
                            "jwks": {"keys": [jwk]}, "algorithms": ["EdDSA"], "intents": ["refund-order"],
                            "agents": ["spiffe://example.org/agent/support-*"]}]}
    runtime = await open_rt(tmp_path, db_url, clock, tasks=issuers)
    try:
        now = int(MONDAY_10)
        claims = {"iss": "https://host.example.org", "aud": "intentgate", "sub": SUPPORT.id, "iat": now,
                  "exp": now + 300, "jti": "tgr_host_0001", "txn": "tgr_host_0001", "scope": GRANT_SCOPE,
                  "tctx": {"intent": "refund-order", "params": REFUND_PARAMS, "reason": "customer asked"}}
        headers = {"kid": "host-key-1", "typ": TASK_GRANT_TYP}
        started = await begin_from(runtime, jwt.encode(claims, private, algorithm="EdDSA", headers=headers))
        assert (await runtime.store.get_task(started.task_id)).issuer == "support-host:https://host.example.org"
        # beyond what the config lets this issuer begin: the signature is good, the begin is not
        other = {**claims, "jti": "tgr_host_0002", "tctx": {"intent": "triage-ticket", "params": TRIAGE,
                                                             "reason": "x"}}
        err = await refused(begin_from(runtime, jwt.encode(other, private, algorithm="EdDSA", headers=headers)))
        assert err.code is ReasonCode.ISSUER_NOT_PERMITTED
        # the local key is not this issuer's
        forged = {**claims, "jti": "tgr_host_0003"}
        local = KeySet.open_or_create(runtime.config.task_issuer_keys_dir).current
        with pytest.raises(TaskError) as exc:
            runtime.task_issuers.verify_grant(jwt.encode(forged, local.private, algorithm="EdDSA", headers=headers),
                                              agent=SUPPORT.id)
        assert exc.value.code is ReasonCode.INVALID_TASK_GRANT
    finally:
        await runtime.aclose()


def test_task_issuer_config_errors() -> None:
    from intentgate.errors import ConfigError

    bad = [
        {"issuers": [{"name": "x"}]},  # neither subjects nor grant_issuer
        {"issuers": [{"name": "x", "grant_issuer": "https://h"}]},  # no keys
        {"issuers": [{"name": "local", "subjects": ["a"]}]},  # reserved
        {"issuers": [{"name": "x", "subjects": ["a"]}, {"name": "x", "subjects": ["b"]}]},  # duplicate
        {"issuers": [{"name": "x", "subjects": ["a"], "algorithms": ["HS256"]}]},  # symmetric
        {"begin": []},
        {"begin": ["anyone"]},
    ]
    for tasks in bad:
        with pytest.raises(ConfigError):
            load_config(None, tasks=tasks)


# ----- break-glass scoped to what it names ------------------------------------------------------


async def grant(rt: Runtime, **kw: Any) -> str:
    record = GrantRecord(id=f"grt_{len(kw)}_{time.monotonic_ns()}", agent=kw.pop("agent", SUPPORT.id),
                         reason="outage", created_by="reviewer", created_at=MONDAY_10,
                         expires_at=MONDAY_10 + 900, **kw)
    await rt.store.grants.create(record)
    return record.id


@pytest.mark.parametrize(("tool", "args"), [
    ("secrets.rotate_credential", {"service": "billing", "grace_period_seconds": 0}),
    ("email.send", {"to": EVIL, "subject": "list", "body": "everyone"}),
])
async def test_attack_an_intent_grant_covers_only_that_intents_steps(rt: Runtime, tool: str, args: dict) -> None:
    await grant(rt, intent="refund-order")
    task = (await rt.decider.begin_task(SUPPORT, "refund-order", REFUND_PARAMS, "x", issuer=ISSUER)).task_id
    for step in ("made_up_step", "refund"):  # an invented step, and a real step with another tool
        v = await rt.decider.decide(call(task, step, tool, args))
        assert v.outcome == "deny" and not any(r.startswith("break_glass") for r in v.reasons), v
        assert {r.split(":")[0] for r in v.reasons} & {"unknown_step", "tool_mismatch"}
    # the grant still does what it is for: a real step of the intent with its own tool, out of order
    v = await rt.decider.decide(call(task, "refund", "payments.refund",
                                     {"order_id": "ORD-7", "amount": 5, "currency": "EUR"}))
    assert v.outcome == "allow" and v.reasons[0].startswith("break_glass:")
    assert "step_out_of_order:refund" in v.reasons  # what it overrode, kept with it


async def test_a_tool_grant_covers_only_that_tool(rt: Runtime) -> None:
    await grant(rt, tool="payments.refund")
    task = (await rt.decider.begin_task(SUPPORT, "refund-order", REFUND_PARAMS, "x", issuer=ISSUER)).task_id
    v = await rt.decider.decide(call(task, "comment", "tickets.add_comment", {"ticket_id": "TCK-1", "body": "x"}))
    assert v.outcome == "deny" and v.reasons == ["step_out_of_order:comment"]
    v = await rt.decider.decide(call(task, "refund", "payments.refund",
                                     {"order_id": "ORD-7", "amount": 5, "currency": "EUR"}))
    assert v.outcome == "allow" and v.reasons[0].startswith("break_glass:")


async def test_attack_a_grant_does_not_skip_an_approval_unless_it_says_so(rt: Runtime) -> None:
    ops_params = {"service": "billing", "owner_email": "owners@example.org"}
    rotate = {"service": "billing", "grace_period_seconds": 600}

    async def to_rotate() -> str:
        task = (await rt.decider.begin_task(OPS, "rotate-credential", ops_params, "rotation", issuer=ISSUER)).task_id
        v = await rt.decider.decide(call(task, "describe", "secrets.describe_credential", {"service": "billing"},
                                         agent=OPS))
        assert v.outcome == "allow"
        return task

    await grant(rt, agent=OPS.id, intent="rotate-credential")
    v = await rt.decider.decide(call(await to_rotate(), "rotate", "secrets.rotate_credential", rotate, agent=OPS))
    assert v.outcome == "hold" and v.reasons == ["approval_required"] and v.approval_id
    overriding = await grant(rt, agent=OPS.id, intent="rotate-credential", overrides_approval=True)
    v = await rt.decider.decide(call(await to_rotate(), "rotate", "secrets.rotate_credential", rotate, agent=OPS))
    assert v.outcome == "allow" and v.reasons == [f"break_glass:{overriding}", "approval_required"]
    assert (await rt.store.grants.get(overriding)).uses == 1
