"""The reviewer REST API on the real app (lifespan, real database, real signatures), filled
with decisions made by the real pipeline."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient

from intentgate.clock import FrozenClock
from intentgate.config import GatewayConfig, load_config
from intentgate.decide import CallRequest
from intentgate.identity import AgentIdentity, DevIssuer
from intentgate.keys import KeySet
from intentgate.review import ADMIN_AUDIENCE, ADMIN_ISSUER, AdminTokenIssuer
from intentgate.runtime import Runtime
from intentgate.web import create_app
from tests.conftest import INTENTS_DIR, POLICY_DIR
from tests.tasks import ISSUER

SUPPORT = AgentIdentity(id="spiffe://example.org/agent/support-1")
OTHER = AgentIdentity(id="spiffe://example.org/agent/support-2")
MONDAY_10 = 1_799_056_800.0  # 2027-01-04T10:00:00Z, inside the change window
HOUR = 3600.0
IDP = "https://idp.example.org/realms/ops"
IDP_AUDIENCE = "intentgate-review"
REFUND = {"ticket_id": "TCK-1", "order_id": "ORD-7"}


@dataclass
class Filled:
    """What the pipeline decided, by name, to compare the API's answers with."""

    ids: dict[str, str] = field(default_factory=dict)
    task_a: str = ""
    task_b: str = ""
    token_jti: str = ""

    def __getitem__(self, name: str) -> str:
        return self.ids[name]


def _call(task: str | None, step: str | None, tool: str, args: dict[str, Any], agent: AgentIdentity = SUPPORT):
    upstream, _, name = tool.partition(".")
    return CallRequest(agent=agent, task_id=task, step=step, upstream=upstream, tool=name, untrusted_arguments=args)


async def _fill(config: GatewayConfig) -> Filled:
    """Task A completes at MONDAY_10 (one token consumed); an hour later task B collects a skipped
    step, a wrong tool, a binding mismatch and a held refund, next to an unknown task, another
    agent's call and a refund over the policy limit (task C)."""
    clock = FrozenClock(MONDAY_10)
    rt = await Runtime.open(config, clock=clock)
    f = Filled()
    try:
        d = rt.decider

        async def call(name: str, *args: Any, **kw: Any) -> None:
            verdict = await d.decide(_call(*args, **kw))
            f.ids[name] = verdict.decision_id
            if name == "a_refund":
                f.token_jti = verdict.token.jti
                await rt.verifier.verify_and_consume(verdict.token.token, tool="payments.refund",
                                                     arguments=args[3], audience="payments", ledger=rt.store)

        started = await d.begin_task(SUPPORT, "refund-order", REFUND, "customer asked", issuer=ISSUER)
        f.task_a, f.ids["a_begin"] = started.task_id, started.decision_id
        await call("a_read", f.task_a, "read_ticket", "tickets.get_ticket", {"ticket_id": "TCK-1"})
        await call("a_lookup", f.task_a, "lookup", "orders.get_order", {"order_id": "ORD-7"})
        await call("a_refund", f.task_a, "refund", "payments.refund",
                   {"order_id": "ORD-7", "amount": 30, "currency": "EUR"})
        await call("a_comment", f.task_a, "comment", "tickets.add_comment", {"ticket_id": "TCK-1", "body": "done"})

        clock.advance(HOUR)
        started = await d.begin_task(SUPPORT, "refund-order", REFUND, "second refund", issuer=ISSUER)
        f.task_b, f.ids["b_begin"] = started.task_id, started.decision_id
        await call("b_skip", f.task_b, "refund", "payments.refund", {"order_id": "ORD-7", "amount": 5, "currency": "EUR"})
        await call("b_wrong_tool", f.task_b, "read_ticket", "email.send", {"ticket_id": "TCK-1"})
        await call("b_read", f.task_b, "read_ticket", "tickets.get_ticket", {"ticket_id": "TCK-1"})
        await call("b_lookup", f.task_b, "lookup", "orders.get_order", {"order_id": "ORD-7"})
        await call("b_binding", f.task_b, "refund", "payments.refund",
                   {"order_id": "ORD-8", "amount": 5, "currency": "EUR"})
        await call("b_hold", f.task_b, "refund", "payments.refund",
                   {"order_id": "ORD-7", "amount": 1800, "currency": "EUR"})
        await call("unknown_task", "tsk_nope", "read_ticket", "tickets.get_ticket", {"ticket_id": "TCK-1"})
        await call("other_agent", f.task_b, "refund", "payments.refund",
                   {"order_id": "ORD-7", "amount": 5, "currency": "EUR"}, agent=OTHER)
        started = await d.begin_task(SUPPORT, "refund-order", REFUND, "third refund", issuer=ISSUER)
        f.ids["c_begin"] = started.decision_id
        for name, step, tool, args in [
            ("c_read", "read_ticket", "tickets.get_ticket", {"ticket_id": "TCK-1"}),
            ("c_lookup", "lookup", "orders.get_order", {"order_id": "ORD-7"}),
            ("c_over_limit", "refund", "payments.refund", {"order_id": "ORD-7", "amount": 4000, "currency": "EUR"}),
        ]:
            await call(name, started.task_id, step, tool, args)
    finally:
        await rt.aclose()
    return f


def make_config(tmp_path: Path, db_url: str, jwks_file: Path | None = None) -> GatewayConfig:
    review: dict[str, Any] = {}
    if jwks_file is not None:
        review = {
            "issuers": [{"kind": "oidc", "issuer": IDP, "audience": IDP_AUDIENCE, "algorithms": ["ES256"],
                         "jwks_file": str(jwks_file)}],
            "role_claim": "realm_access.roles",
        }
    config = load_config(None, data_dir=tmp_path, intents_dir=INTENTS_DIR, policy_dir=POLICY_DIR, review=review)
    return config.model_copy(update={"store": config.store.model_copy(update={"url": db_url})})


def fill(config: GatewayConfig) -> Filled:
    return asyncio.run(_fill(config))


def admin_token(config: GatewayConfig, reviewer: str = "alice", ttl: int = 600) -> str:
    return AdminTokenIssuer(KeySet.open_or_create(config.admin_keys_dir)).mint(reviewer, ttl)


def agent_token(config: GatewayConfig) -> str:
    return DevIssuer(KeySet.open_or_create(config.agent_issuer_keys_dir)).mint(SUPPORT.id)


@dataclass
class Env:
    client: TestClient
    config: GatewayConfig
    filled: Filled
    idp_key: ec.EllipticCurvePrivateKey

    def get(self, path: str, token: str | None = "admin", **params: Any) -> Any:
        if token == "admin":
            token = admin_token(self.config)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.client.get(path, params=params, headers=headers)

    def ids(self, **params: Any) -> list[str]:
        r = self.get("/v1/decisions", limit=500, **params)
        assert r.status_code == 200, r.text
        return [d["id"] for d in r.json()["items"]]

    def idp_token(self, roles: list[str] | None, **over: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {"iss": IDP, "sub": "bob@example.org", "aud": IDP_AUDIENCE, "iat": now,
                                  "exp": now + 300}
        if roles is not None:
            claims["realm_access"] = {"roles": roles}
        claims.update(over)
        return jwt.encode(claims, self.idp_key, algorithm="ES256", headers={"kid": "idp-1"})


@pytest.fixture
def env(tmp_path: Path, db_url: str) -> Iterator[Env]:
    idp_key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(idp_key.public_key()))
    jwk.update(kid="idp-1", alg="ES256", use="sig")
    jwks_file = tmp_path / "idp-jwks.json"
    jwks_file.write_text(json.dumps({"keys": [jwk]}))
    config = make_config(tmp_path, db_url, jwks_file)
    filled = fill(config)
    with TestClient(create_app(config)) as client:
        yield Env(client, config, filled, idp_key)


# ----- who may read ----------------------------------------------------------------------
ENDPOINTS = ["/v1/decisions", "/v1/decisions/dec_x", "/v1/audit/export", "/v1/overview"]


def test_anonymous_and_bad_tokens_get_401(env: Env) -> None:
    forged = AdminTokenIssuer(KeySet.open_or_create(env.config.data_dir / "forger")).mint("mallory")
    an_hour_ago = FrozenClock(time.time() - 3600)
    stale = AdminTokenIssuer(KeySet.open_or_create(env.config.admin_keys_dir), clock=an_hour_ago).mint("alice", 60)
    for path in ENDPOINTS:
        for token in (None, "not-a-jwt", forged, stale):
            r = env.get(path, token=token)
            assert r.status_code == 401, (path, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
            assert r.json()["detail"]["error"] == "unauthenticated"


def test_agent_token_and_missing_role_get_403(env: Env) -> None:
    for path in ENDPOINTS:
        for token in (agent_token(env.config), env.idp_token(None), env.idp_token(["viewer"])):
            r = env.get(path, token=token)
            assert r.status_code == 403, (path, r.text)
            assert r.json()["detail"]["error"] == "forbidden"


def test_admin_token_with_agent_typ_or_audience_is_refused(env: Env) -> None:
    """An admin-key signature alone is not enough: the typ header and audience must be the admin ones."""
    key = KeySet.open_or_create(env.config.admin_keys_dir).current
    now = int(time.time())
    base = {"iss": ADMIN_ISSUER, "sub": "alice", "aud": ADMIN_AUDIENCE, "iat": now, "exp": now + 60,
            "roles": ["intentgate-reviewer"]}
    wrong_typ = jwt.encode(base, key.private, algorithm="EdDSA", headers={"kid": key.kid, "typ": "JWT"})
    wrong_aud = jwt.encode({**base, "aud": "intentgate"}, key.private, algorithm="EdDSA",
                           headers={"kid": key.kid, "typ": "intentgate-admin+jwt"})
    no_role = jwt.encode({**base, "roles": []}, key.private, algorithm="EdDSA",
                         headers={"kid": key.kid, "typ": "intentgate-admin+jwt"})
    assert env.get("/v1/decisions", token=wrong_typ).status_code == 401
    assert env.get("/v1/decisions", token=wrong_aud).status_code == 401
    assert env.get("/v1/decisions", token=no_role).status_code == 403


def test_admin_token_is_no_agent_token(env: Env) -> None:
    """The other direction: an admin token does not get through the agent door."""
    r = env.client.post("/v1/decide", json={"task": "t", "step": "s", "upstream": "u", "tool": "x"},
                        headers={"Authorization": f"Bearer {admin_token(env.config)}"})
    assert r.status_code == 401


def test_reviewer_tokens_get_200(env: Env) -> None:
    assert env.get("/v1/decisions").status_code == 200
    r = env.get("/v1/decisions", token=env.idp_token(["viewer", "intentgate-reviewer"]))
    assert r.status_code == 200 and r.json()["items"]
    wrong_aud = env.idp_token(["intentgate-reviewer"], aud="someone-else")
    assert env.get("/v1/decisions", token=wrong_aud).status_code == 401


# ----- the overview -------------------------------------------------------------------------
def test_overview_as_json(env: Env) -> None:
    """``GET /v1/overview``: the overview page's figures for a range, as JSON."""
    r = env.get("/v1/overview", since="2027-01-04T09:00:00Z", until="2027-01-04T12:00:00Z")
    assert r.status_code == 200, r.text
    ov = r.json()
    assert ov["totals"] == {"allow": 11, "deny": 6, "hold": 1, "would_deny": 0}
    assert ov["bucket_seconds"] == 300 and len(ov["buckets"]) == 36 and ov["range"] is None
    assert ov["buckets"][24] == {"start": "2027-01-04T11:00:00Z", "end": "2027-01-04T11:05:00Z", "allow": 6,
                                 "deny": 6, "hold": 1, "would_deny": 0}
    assert ov["tools"][0] == {"name": "payments.refund", "deny": 4, "hold": 1, "would_deny": 0, "total": 5}
    assert {e["name"]: e["total"] for e in ov["agents"]} == {SUPPORT.id: 6, OTHER.id: 1}
    assert ov["distinct"] == {"reasons": len(ov["reasons"]), "agents": 2, "tools": 3, "intents": 2}
    assert ov["backlog"] == {"pending_approvals": 1, "active_grants": 0, "unsigned_grants": 0}
    assert [a["decision_id"] for a in ov["pending_approvals"]] == [env.filled["b_hold"]]
    assert ov["active_grants"] == ov["unsigned_grants"] == []

    env.client.app.state.review.clock = FrozenClock(MONDAY_10 + HOUR + 600)
    last_hour = env.get("/v1/overview", range="1h").json()
    assert last_hour["range"] == "1h" and last_hour["since"] == "2027-01-04T10:10:00Z"
    assert last_hour["totals"] == {"allow": 6, "deny": 6, "hold": 1, "would_deny": 0}
    assert env.get("/v1/overview").json()["range"] == "24h"
    for bad in ({"range": "2h"}, {"since": "yesterday"}, {"since": "2027-01-04T12:00:00Z", "until": "2027-01-04T11:00:00Z"},
                {"since": "2027-02-01T00:00:00Z"}, {"top": "5"}):  # (a since after now: until is now)
        r = env.get("/v1/overview", **bad)
        assert r.status_code == 422, (bad, r.text)
    assert "/v1/overview" in env.client.get("/openapi.json").json()["paths"]


# ----- list and filters --------------------------------------------------------------------
def test_list_is_newest_first_and_complete(env: Env) -> None:
    r = env.get("/v1/decisions", limit=500)
    items = r.json()["items"]
    assert r.json()["next_before"] is None
    assert set(d["id"] for d in items) == set(env.filled.ids.values())
    seqs = [d["seq"] for d in items]
    assert seqs == sorted(seqs, reverse=True) and len(set(seqs)) == len(seqs)
    first = next(d for d in items if d["id"] == env.filled["a_read"])
    assert first["at"] == "2027-01-04T10:00:00Z" and first["tool"] == "tickets.get_ticket"
    assert "policy_input" not in first  # list rows are summaries


def test_filters_narrow_exactly(env: Env) -> None:
    f = env.filled
    denies = {"b_skip", "b_wrong_tool", "b_binding", "unknown_task", "other_agent", "c_over_limit"}
    assert set(env.ids(outcome="deny")) == {f[n] for n in denies}
    assert env.ids(outcome="hold") == [f["b_hold"]]
    assert env.ids(agent=OTHER.id) == [f["other_agent"]]
    assert env.ids(reason="step_out_of_order") == [f["b_skip"]]
    assert env.ids(reason="binding_mismatch:order_id") == [f["b_binding"]]
    assert env.ids(reason="binding_mismatch:amount") == []
    assert env.ids(reason="policy") == [f["c_over_limit"], f["b_hold"]]
    assert env.ids(reason="policy_denied") == [f["c_over_limit"]]
    assert env.ids(tool="email.send") == [f["b_wrong_tool"]]
    assert set(env.ids(tool="payments.refund", outcome="allow")) == {f["a_refund"]}
    # intent: everything but the call on an unknown task (the gateway cannot know its intent)
    assert set(env.ids(intent="refund-order")) == set(f.ids.values()) - {f["unknown_task"]}
    assert env.ids(intent="triage-ticket") == []
    assert set(env.ids(kind="task/begin")) == {f["a_begin"], f["b_begin"], f["c_begin"]}
    # time range: task A was an hour before everything else
    early = {f[n] for n in ("a_begin", "a_read", "a_lookup", "a_refund", "a_comment")}
    assert set(env.ids(until="2027-01-04T10:30:00Z")) == early
    assert set(env.ids(since="2027-01-04T10:30:00Z")) == set(f.ids.values()) - early
    assert env.ids(since="2027-01-04T10:30:00Z", until="2027-01-04T11:00:00Z") == []
    # text search: ids, task ids, reasons, agents, case-insensitive
    assert env.ids(q=f["b_hold"]) == [f["b_hold"]]
    assert set(env.ids(q=f.task_a)) == early
    assert env.ids(q="LARGE_REFUND") == [f["c_over_limit"], f["b_hold"]]
    assert env.ids(q="Refund_Over") == [f["c_over_limit"]]
    assert env.ids(q="support-2") == [f["other_agent"]]
    assert env.ids(q="tsk_nope") == [f["unknown_task"]]
    assert env.ids(q="100%_") == []  # LIKE wildcards are literal


def test_bad_filters_are_422(env: Env) -> None:
    assert env.get("/v1/decisions", reason="no_such_code").status_code == 422
    assert env.get("/v1/decisions", outcome="maybe").status_code == 422
    assert env.get("/v1/decisions", limit=0).status_code == 422
    assert env.get("/v1/decisions", outcom="deny").status_code == 422  # a typo is not ignored


def test_paging_is_disjoint_and_complete(env: Env) -> None:
    seen: list[str] = []
    pages = 0
    before = None
    while True:
        params = {"limit": 4} | ({"before": before} if before else {})
        page = env.get("/v1/decisions", **params).json()
        seen += [d["id"] for d in page["items"]]
        pages += 1
        before = page["next_before"]
        if before is None:
            break
        assert len(page["items"]) == 4 and page["items"][-1]["seq"] == before
    assert len(seen) == len(set(seen)) == len(env.filled.ids)
    assert set(seen) == set(env.filled.ids.values())
    assert pages == -(-len(seen) // 4)
    # with a filter: denials two by two
    deny_pages, before = [], None
    while True:
        page = env.get("/v1/decisions", outcome="deny", limit=2, **({"before": before} if before else {})).json()
        deny_pages.append([d["id"] for d in page["items"]])
        if (before := page["next_before"]) is None:
            break
    flat = [i for p in deny_pages for i in p]
    assert flat == env.ids(outcome="deny") and len(deny_pages) == 3


# ----- one decision ------------------------------------------------------------------------
def test_detail_of_a_held_refund(env: Env) -> None:
    f = env.filled
    r = env.get(f"/v1/decisions/{f['b_hold']}")
    assert r.status_code == 200, r.text
    body = r.json()
    dec = body["decision"]
    assert dec["outcome"] == "hold" and dec["reasons"] == ["policy_hold", "policy:large_refund"]
    assert dec["policy_input"]["call"]["arguments"]["amount"] == 1800
    assert dec["policy_result"]["hold"] is True
    assert set(dec["timings_us"]) >= {"task", "workflow", "policy"}
    assert dec["masked"] == [] and len(dec["hash"]) == 64
    assert "approval" in body["explanation"]
    assert [a["status"] for a in body["approvals"]] == ["pending"]
    assert body["token"] is None and body["call_outcome"] is None
    task = body["task"]
    assert task["id"] == f.task_b and task["status"] == "active" and task["params"] == REFUND
    assert [h["step"] for h in task["history"]] == ["read_ticket", "lookup"]
    graph = body["graph"]
    assert graph["intent"] == "refund-order" and graph["start"] == ["read_ticket"]
    assert graph["attempted"] == "refund" and graph["attempted_known"] is True
    assert [(p["step"], p["relation"]) for p in graph["path"]] == [("read_ticket", "before"), ("lookup", "before")]
    steps = {s["name"]: s for s in graph["steps"]}
    assert steps["read_ticket"]["taken"] == [1] and steps["lookup"]["taken"] == [2]
    assert steps["refund"]["taken"] == [] and steps["refund"]["attempted"] is True
    assert steps["lookup"]["next"] == ["refund"] and steps["comment"]["terminal"] is True
    assert graph["allowed_next"] == ["refund"]


def test_detail_marks_path_around_the_decision_and_token_status(env: Env) -> None:
    f = env.filled
    body = env.get(f"/v1/decisions/{f['a_refund']}").json()
    assert body["token"]["jti"] == f.token_jti and body["token"]["status"] == "consumed"
    assert body["decision"]["token_jti"] == f.token_jti
    relations = [(p["step"], p["relation"]) for p in body["graph"]["path"]]
    assert relations == [("read_ticket", "before"), ("lookup", "before"), ("refund", "this"), ("comment", "after")]
    assert body["task"]["status"] == "completed" and body["explanation"] == "allowed"
    # an unconsumed token of a completed task was revoked
    body = env.get(f"/v1/decisions/{f['a_read']}").json()
    assert body["token"]["status"] == "revoked"
    # a skipped step: nothing taken before it, start steps were the allowed ones
    body = env.get(f"/v1/decisions/{f['b_skip']}").json()
    assert body["graph"]["allowed_next"] == ["read_ticket"] and body["graph"]["attempted"] == "refund"
    assert all(p["relation"] == "after" for p in body["graph"]["path"])
    assert "allowed next: read_ticket" in body["explanation"]
    # no task, no intent: the record alone
    body = env.get(f"/v1/decisions/{f['unknown_task']}").json()
    assert body["task"] is None and body["graph"] is None and body["decision"]["reasons"] == ["unknown_task"]


def test_unknown_decision_is_404(env: Env) -> None:
    r = env.get("/v1/decisions/dec_doesnotexist")
    assert r.status_code == 404 and r.json()["detail"]["error"] == "not_found"


# ----- export ------------------------------------------------------------------------------
EXPORT_FIELDS = [
    "seq", "id", "at", "kind", "outcome", "reasons", "agent", "intent", "intent_version", "task_id", "step",
    "upstream", "tool", "arguments_sha256", "token_jti", "policy_revision", "intents_revision", "arguments",
    "policy_input", "policy_result", "masked", "timings_us", "token_expires_at", "prev_hash", "hash", "hash_v",
]


def export(env: Env, **params: Any) -> list[dict[str, Any]]:
    r = env.get("/v1/audit/export", **params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in r.text.splitlines()]


def test_export_every_decision_once_in_seq_order(env: Env) -> None:
    lines = export(env)
    assert [d["id"] for d in lines if d["id"] in env.filled.ids.values()] == [d["id"] for d in lines]
    assert sorted(d["id"] for d in lines) == sorted(env.filled.ids.values())
    assert [d["seq"] for d in lines] == list(range(1, len(lines) + 1))
    assert all(list(d) == EXPORT_FIELDS for d in lines)
    # each line carries its Merkle leaf hash (v2 records: no chain link), every one distinct
    assert all(d["hash_v"] == 2 and d["prev_hash"] == "" and len(d["hash"]) == 64 for d in lines)
    assert len({d["hash"] for d in lines}) == len(lines)
    assert [d["seq"] for d in export(env, after_seq=10)] == list(range(11, len(lines) + 1))


def test_export_since(env: Env) -> None:
    f = env.filled
    lines = export(env, since="2027-01-04T10:30:00Z")
    early = {f[n] for n in ("a_begin", "a_read", "a_lookup", "a_refund", "a_comment")}
    assert {d["id"] for d in lines} == set(f.ids.values()) - early
    assert all(d["at"] >= "2027-01-04T11:00:00" for d in lines)
    assert export(env, since="2030-01-01T00:00:00Z") == []


def test_export_streams_in_batches(env: Env) -> None:
    async def batches() -> list[int]:
        sizes = []
        async for batch in env.client.app.state.review.export(batch=4):
            sizes.append(len(batch))
        return sizes

    sizes = env.client.portal.call(batches)
    assert sum(sizes) == len(env.filled.ids) and max(sizes) == 4 and len(sizes) == -(-sum(sizes) // 4)


def test_openapi_documents_the_reviewer_api(env: Env) -> None:
    spec = env.client.get("/openapi.json").json()
    for path in ("/v1/decisions", "/v1/decisions/{decision_id}", "/v1/audit/export"):
        op = spec["paths"][path]["get"]
        assert op["security"] == [{"reviewer": []}] and {"401", "403"} <= set(op["responses"])
    params = {p["name"] for p in spec["paths"]["/v1/decisions"]["get"]["parameters"]}
    assert {"outcome", "agent", "intent", "tool", "reason", "since", "until", "q", "before", "limit"} <= params
    assert "DecisionPublic" in spec["components"]["schemas"]
    assert spec["components"]["securitySchemes"]["reviewer"]["scheme"] == "bearer"


def test_store_failure_is_503_not_500(env: Env) -> None:
    env.client.app.state.review.store.close()  # every read now fails with a StoreError
    for path in ("/v1/decisions", f"/v1/decisions/{env.filled['a_read']}", "/v1/audit/export"):
        r = env.get(path)
        assert r.status_code == 503 and r.json()["detail"]["error"] == "store_error", (path, r.text)
