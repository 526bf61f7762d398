"""The reviewer web UI on the real app (lifespan, real database, real signatures), filled with
decisions made by the real pipeline (see test_review_api), driven as a browser would: GETs,
form POSTs and the session cookie."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient

from intentgate.config import load_config
from intentgate.errors import ReasonCode
from intentgate.runtime import Runtime
from intentgate.ui.graph import layout
from intentgate.ui.render import REASON_TEXT
from intentgate.ui.session import COOKIE
from intentgate.web import create_app
from tests.conftest import INTENTS_DIR, POLICY_DIR, strict_refund_policy
from tests.test_review_actions import HELD, as_agent
from tests.test_review_api import REFUND, SUPPORT, Env, _call, admin_token, agent_token, env  # noqa: F401
from tests.tasks import ISSUER

PAGES = ["/ui/decisions", "/ui/decisions/dec_x", "/ui/approvals", "/ui/grants", "/ui/replay", "/ui/overview",
         "/ui/decisions.ndjson"]
ACTIONS = ["/ui/approvals/apr_x/approve", "/ui/approvals/apr_x/reject", "/ui/grants", "/ui/grants/grt_x/sign-off",
           "/ui/grants/grt_x/revoke", "/ui/replay", "/ui/logout"]


def login(env: Env, token: str | None = None) -> str:
    """Sign in through the form; returns the page's CSRF token."""
    r = env.client.post("/ui/login", data={"token": token or admin_token(env.config), "next": ""},
                        follow_redirects=False)
    assert r.status_code == 303, r.text
    return csrf_of(env.client.get("/ui/decisions").text)


def csrf_of(html: str) -> str:
    found = set(re.findall(r'name="csrf" value="([^"]*)"', html))
    assert len(found) == 1, found
    return found.pop()


def decision_ids(html: str) -> list[str]:
    return re.findall(r'<td><a href="/ui/decisions/((?:dec|act)_[A-Za-z0-9_-]+)">', html)


def node_classes(html: str) -> dict[str, set[str]]:
    return {step: set(cls.split()) for cls, step in re.findall(r'<g class="([^"]*)" data-step="([^"]*)">', html)}


# ----- who may use it ----------------------------------------------------------------------
def test_anonymous_is_sent_to_login(env: Env) -> None:
    for path in PAGES:
        r = env.client.get(path, params={"outcome": "hold"} if path == "/ui/decisions" else None,
                           follow_redirects=False)
        assert r.status_code == 303, (path, r.text)
        where = urlsplit(r.headers["location"])
        assert where.path == "/ui/login"
        back = parse_qs(where.query)["next"][0]
        assert back.startswith(path)
    assert parse_qs(urlsplit(env.client.get("/ui/decisions?outcome=hold", follow_redirects=False)
                             .headers["location"]).query)["next"] == ["/ui/decisions?outcome=hold"]
    for path in ACTIONS:
        r = env.client.post(path, data={"csrf": "x"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/ui/login", path
    env.client.cookies.set(COOKIE, "not-a-jwt", path="/ui")
    assert env.client.get("/ui/decisions", follow_redirects=False).status_code == 303
    page = env.client.get("/ui/login")
    assert page.status_code == 200 and 'name="token"' in page.text and "intentgate admin-token" in page.text


def test_agent_token_is_refused_with_a_clear_message(env: Env) -> None:
    r = env.client.post("/ui/login", data={"token": agent_token(env.config)}, follow_redirects=False)
    assert r.status_code == 403
    assert "agent&#39;s workload token" in r.text and "can never be used here" in r.text
    assert COOKIE not in r.headers.get("set-cookie", "")
    r = env.client.post("/ui/login", data={"token": env.idp_token(["viewer"])}, follow_redirects=False)
    assert r.status_code == 403 and COOKIE not in r.headers.get("set-cookie", "")
    r = env.client.post("/ui/login", data={"token": "eyJnot.a.token"}, follow_redirects=False)
    assert r.status_code == 401 and "not a valid reviewer token" in r.text
    assert env.client.get("/ui/decisions", follow_redirects=False).status_code == 303


def test_admin_token_login_sets_a_strict_httponly_cookie(env: Env) -> None:
    token = admin_token(env.config)
    r = env.client.post("/ui/login", data={"token": token, "next": "/ui/approvals"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/approvals"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}={token};")
    attrs = {a.strip().lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/ui"} <= attrs and "secure" not in attrs
    assert any(a.startswith("max-age=") and 0 < int(a[8:]) <= 600 for a in attrs)
    page = env.client.get("/ui/approvals")
    assert page.status_code == 200 and "alice" in page.text and 'href="/ui/grants"' in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    # over https the cookie is Secure too; an off-site `next` is ignored
    r = env.client.post("https://testserver/ui/login", data={"token": token, "next": "//evil.example/x"},
                        follow_redirects=False)
    assert "secure" in {a.strip().lower() for a in r.headers["set-cookie"].split(";")}
    assert r.headers["location"] == "/ui/decisions"
    # an OIDC reviewer token with the role works as well
    login(env, env.idp_token(["intentgate-reviewer"]))
    assert "bob@example.org" in env.client.get("/ui/decisions").text


def test_logout_needs_the_csrf_token_and_clears_the_cookie(env: Env) -> None:
    csrf = login(env)
    assert env.client.post("/ui/logout", data={}, follow_redirects=False).status_code == 403
    r = env.client.post("/ui/logout", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")
    assert f'{COOKIE}=""' in r.headers["set-cookie"] or "max-age=0" in r.headers["set-cookie"].lower()
    assert env.client.get("/ui/decisions", follow_redirects=False).status_code == 303


# ----- inbox -------------------------------------------------------------------------------
def test_inbox_lists_denials_and_filters_narrow(env: Env) -> None:
    login(env)
    f = env.filled
    denies = {f[n] for n in ("b_skip", "b_wrong_tool", "b_binding", "unknown_task", "other_agent", "c_over_limit")}
    page = env.client.get("/ui")
    assert page.status_code == 200 and page.url.path == "/ui/decisions"
    assert set(decision_ids(page.text)) == denies  # outcome defaults to deny
    assert 'class="row-deny"' in page.text and "step_out_of_order:refund" in page.text

    def ids(**params: str) -> list[str]:
        r = env.client.get("/ui/decisions", params=params)
        assert r.status_code == 200, r.text
        return decision_ids(r.text)

    assert ids(outcome="hold") == [f["b_hold"]]
    assert set(ids(outcome="any")) == set(f.ids.values())
    assert ids(reason="binding_mismatch") == [f["b_binding"]]
    assert ids(tool="email.send") == [f["b_wrong_tool"]]
    assert ids(agent="spiffe://example.org/agent/support-2") == [f["other_agent"]]
    assert ids(q="tsk_nope") == [f["unknown_task"]]
    assert ids(outcome="any", intent="refund-order", until="2027-01-04T10:30:00") == [
        f[n] for n in ("a_comment", "a_refund", "a_lookup", "a_read", "a_begin")]
    assert set(ids(outcome="allow", since="2027-01-04T10:30")) == {f[n] for n in (
        "b_begin", "b_read", "b_lookup", "c_begin", "c_read", "c_lookup")}
    bad = env.client.get("/ui/decisions", params={"reason": "no_such_code"})
    assert bad.status_code == 422 and "unknown reason code" in bad.text
    # the filters stay in the form
    assert 'value="email.send"' in env.client.get("/ui/decisions", params={"tool": "email.send"}).text


def test_inbox_pages_older_by_key(env: Env) -> None:
    login(env)
    seen: list[str] = []
    url = "/ui/decisions?outcome=any&limit=4"
    for _ in range(20):
        page = env.client.get(url)
        got = decision_ids(page.text)
        assert 0 < len(got) <= 4
        seen += got
        older = re.search(r'<a href="([^"]+)" rel="next">older', page.text)
        if older is None:
            break
        url = older.group(1).replace("&amp;", "&")
        assert "outcome=any" in url and "before=" in url
    assert len(seen) == len(set(seen)) == len(env.filled.ids)


# ----- one decision ------------------------------------------------------------------------
def test_decision_page_explains_and_draws_the_graph(env: Env) -> None:
    login(env)
    r = env.client.get(f"/ui/decisions/{env.filled['b_binding']}")
    assert r.status_code == 200
    html = r.text
    assert "argument &#39;order_id&#39; must equal the value the task is bound to" in html  # explain()
    assert "differs from the value the task is bound to" in html  # the reason code in plain words
    assert "<svg" in html and 'aria-labelledby="graph-title"' in html
    nodes = node_classes(html)
    assert set(nodes) == {"read_ticket", "lookup", "refund", "comment"}
    assert {"attempted", "deny"} <= nodes["refund"] and "taken" not in nodes["refund"]
    assert {"taken"} <= nodes["read_ticket"] and {"taken"} <= nodes["lookup"]
    assert "attempted" not in nodes["lookup"] and "taken" not in nodes["comment"]
    assert env.filled.task_b in html and "customer asked" not in html  # task B's reason is "second refund"
    assert "second refund" in html
    assert "task issuer <code>orchestrator:spiffe://example.org/orchestrator</code>" in html  # who began it
    assert "&#34;ORD-8&#34;" in html  # the raw arguments, pretty JSON (escaped)
    assert '"workflow"' not in html and "&#34;workflow&#34;" in html  # the raw policy input
    # a skipped step: the jump from the start is drawn, nothing was taken
    skip = env.client.get(f"/ui/decisions/{env.filled['b_skip']}").text
    nodes = node_classes(skip)
    assert {"attempted", "deny"} <= nodes["refund"] and not any("taken" in c for c in nodes.values())
    assert "later" in nodes["read_ticket"] and "later" in nodes["lookup"]  # task B took them after the skip
    assert 'class="edge jump deny"' in skip
    # an allowed call shows its consumed token and no jump
    allowed = env.client.get(f"/ui/decisions/{env.filled['a_refund']}").text
    assert env.filled.token_jti in allowed and "consumed" in allowed
    assert {"attempted", "allow"} <= node_classes(allowed)["refund"] and "edge jump" not in allowed
    # the held call offers approve/reject right there
    held = env.client.get(f"/ui/decisions/{env.filled['b_hold']}").text
    assert "held for a reviewer" in held and 'formaction="/ui/approvals/' in held
    assert env.client.get("/ui/decisions/dec_unknown").status_code == 404
    # inbox rows link to the decision page
    assert f'href="/ui/decisions/{env.filled["b_skip"]}"' in env.client.get("/ui/decisions").text


def test_graph_layers_run_left_to_right_from_the_start(env: Env) -> None:
    import asyncio

    detail = asyncio.run(_detail(env, env.filled["b_binding"]))
    g = layout(detail.graph, detail.decision.outcome)
    x = {n.name: n.x for n in g.nodes}
    assert x["read_ticket"] < x["lookup"] < x["refund"] < x["comment"]
    assert [e.classes for e in g.edges].count("edge taken") == 1  # read_ticket → lookup
    assert all(n.x + n.w <= g.width and n.y + n.h <= g.height for n in g.nodes)


async def _detail(env: Env, decision_id: str):
    return await env.client.app.state.review.detail(decision_id)


def test_user_data_is_escaped(env: Env) -> None:
    login(env)
    evil = "<script>alert(1)</script>"

    async def begin(rt: Runtime) -> str:
        started = await rt.decider.begin_task(SUPPORT, "refund-order", {"ticket_id": "TCK-1", "order_id": "ORD-7"},
                                              evil, issuer=ISSUER)
        return (await rt.decider.decide(_call(started.task_id, "lookup", "orders.get_order",
                                              {"order_id": "ORD-7", "x": evil}))).decision_id

    decision_id = as_agent(env, begin)
    html = env.client.get(f"/ui/decisions/{decision_id}").text
    assert evil not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    search = env.client.get("/ui/decisions", params={"q": evil}).text
    assert evil not in search and "&lt;script&gt;" in search


def test_an_unknown_step_is_drawn_off_the_graph(env: Env) -> None:
    login(env)
    verdict = as_agent(env, lambda rt: rt.decider.decide(
        _call(env.filled.task_b, "refund_everything", "payments.refund", HELD)))
    assert verdict.outcome == "deny"
    html = env.client.get(f"/ui/decisions/{verdict.decision_id}").text
    nodes = node_classes(html)
    assert {"attempted", "unknown", "deny"} <= nodes["refund_everything"]
    assert "not in this intent" in html and 'class="edge jump deny"' in html
    assert {"taken"} <= nodes["lookup"]  # task B had read the ticket and looked the order up


def test_every_reason_code_has_plain_words() -> None:
    assert set(REASON_TEXT) == set(ReasonCode)


# an organisation's rule beside the base policy: one reason annotated (with text to escape), one not
LEGAL_HOLD = """package intentgate

import rego.v1

_frozen_order if {
	input.call.tool == "get_order"
	input.call.arguments.order_id == "ORD-9"
}

# METADATA
# title: Order under a legal hold
# description: |
#   Orders under a legal hold may not be read by agents.
#   Ask <legal@example.org> to lift it.
deny contains "legal_hold" if _frozen_order

deny contains "order_frozen" if _frozen_order
"""


@pytest.mark.parametrize("engine", ["embedded", pytest.param("opa", marks=pytest.mark.opa)])
def test_a_rego_reason_is_explained_by_its_rules_metadata(tmp_path: Path, engine: str,
                                                          request: pytest.FixtureRequest) -> None:
    policy_dir = tmp_path / "policy"
    shutil.copytree(POLICY_DIR, policy_dir)
    (policy_dir / "intentgate" / "legal_hold.rego").write_text(LEGAL_HOLD)
    policy = {"engine": engine, "url": request.getfixturevalue("opa_url") if engine == "opa" else None}
    config = load_config(None, data_dir=tmp_path, intents_dir=INTENTS_DIR, policy_dir=policy_dir, policy=policy)

    async def refused_and_held() -> tuple[str, str]:
        rt = await Runtime.open(config)
        try:
            assert type(rt.policy).__name__ == {"embedded": "EmbeddedEngine", "opa": "OpaServerEngine"}[engine]
            d = rt.decider
            started = await d.begin_task(SUPPORT, "refund-order", {"ticket_id": "TCK-1", "order_id": "ORD-9"},
                                         "customer asked", issuer=ISSUER)
            task = started.task_id
            read = await d.decide(_call(task, "read_ticket", "tickets.get_ticket", {"ticket_id": "TCK-1"}))
            assert read.outcome == "allow", read
            denied = await d.decide(_call(task, "lookup", "orders.get_order", {"order_id": "ORD-9"}))
            other = await d.begin_task(SUPPORT, "refund-order", REFUND, "second", issuer=ISSUER)
            for step, tool, args in [("read_ticket", "tickets.get_ticket", {"ticket_id": "TCK-1"}),
                                     ("lookup", "orders.get_order", {"order_id": "ORD-7"})]:
                assert (await d.decide(_call(other.task_id, step, tool, args))).outcome == "allow"
            held = await d.decide(_call(other.task_id, "refund", "payments.refund", HELD))
            return denied.decision_id, held.decision_id
        finally:
            await rt.aclose()

    denied, held = asyncio.run(refused_and_held())
    with TestClient(create_app(config)) as client:
        client.post("/ui/login", data={"token": admin_token(config), "next": ""})
        html = client.get(f"/ui/decisions/{denied}").text
        explained = dict(re.findall(r"<dt><code>([^<]+)</code></dt><dd>(.*?)</dd>", html, re.S))
        assert set(explained) == {"policy_denied", "policy:legal_hold", "policy:order_frozen"}
        legal = explained["policy:legal_hold"]
        assert '<strong class="reason-title">Order under a legal hold</strong>' in legal
        assert "Orders under a legal hold may not be read by agents.\nAsk &lt;legal@example.org&gt; to lift it." in legal
        assert "<legal@" not in html  # escaped like any other text
        assert "<code>data.intentgate.deny</code>, intentgate/legal_hold.rego:15" in legal
        # a reason from a rule without METADATA keeps the generic words
        assert explained["policy:order_frozen"] == f"{REASON_TEXT[ReasonCode.POLICY]} (order_frozen)"
        # the inbox row says the same, shorter
        row = next(r for r in client.get("/ui/decisions").text.split("<tr ") if denied in r)
        assert "<code>policy:legal_hold</code><span class=\"reason-note\"><strong class=\"reason-title\">" \
               "Order under a legal hold</strong>" in row
        assert "<code>policy:order_frozen</code></li>" in row
        # and a hold the base policy gives is explained in the queue and on its page
        queue = client.get("/ui/approvals").text
        assert "Large refund</strong>" in queue and "wait for a reviewer" in queue
        assert "<strong class=\"reason-title\">Large refund</strong>" in client.get(f"/ui/decisions/{held}").text


# ----- approvals ---------------------------------------------------------------------------
def test_approve_by_form_needs_the_csrf_token(env: Env) -> None:
    csrf = login(env)
    queue = env.client.get("/ui/approvals").text
    approval = re.search(r'action="/ui/approvals/(apr_[A-Za-z0-9_-]+)/approve"', queue).group(1)
    assert env.filled["b_hold"] in queue
    for data in ({"note": "x"}, {"note": "x", "csrf": "0" * 64}, {"csrf": csrf[:-1]}):
        r = env.client.post(f"/ui/approvals/{approval}/approve", data=data)
        assert r.status_code == 403 and "Reload the page" in r.text
    assert approval in env.client.get("/ui/approvals").text  # still pending

    r = env.client.post(f"/ui/approvals/{approval}/approve", data={"csrf": csrf, "note": "called the customer"})
    assert r.status_code == 200 and f"Approved {approval}" in r.text
    assert f'action="/ui/approvals/{approval}/approve"' not in r.text
    again = env.client.post(f"/ui/approvals/{approval}/reject", data={"csrf": csrf})
    assert again.status_code == 409 and "it is already approved" in again.text
    assert env.client.post("/ui/approvals/apr_nope/approve", data={"csrf": csrf}).status_code == 404
    listed = env.client.get("/ui/approvals", params={"status": "approved"}).text
    assert approval in listed and "called the customer" in listed

    verdict = as_agent(env, lambda rt: rt.decider.decide(_call(env.filled.task_b, "refund", "payments.refund", HELD)))
    assert verdict.outcome == "allow" and verdict.reasons == [f"approved:{approval}"]

    # the approval is a record of the log, listed by its kind and explained on its page
    actions = env.client.get("/ui/decisions", params={"kind": "review/approve", "outcome": "any"}).text
    [record] = decision_ids(actions)
    page = env.client.get(f"/ui/decisions/{record}").text
    assert f"approved {approval}" in page and "called the customer" in page
    assert "Replay this decision" not in page  # an action, not a decision: nothing to replay


def test_reject_by_form(env: Env) -> None:
    csrf = login(env)
    approval = re.search(r'/ui/approvals/(apr_[A-Za-z0-9_-]+)/reject', env.client.get("/ui/approvals").text).group(1)
    r = env.client.post(f"/ui/approvals/{approval}/reject", data={"csrf": csrf, "note": "no"})
    assert r.status_code == 200 and f"Rejected {approval}" in r.text and "Nothing is waiting" in r.text
    verdict = as_agent(env, lambda rt: rt.decider.decide(_call(env.filled.task_b, "refund", "payments.refund", HELD)))
    assert verdict.outcome == "hold"


# ----- grants ------------------------------------------------------------------------------
def test_grants_form_creates_signs_off_and_revokes(env: Env) -> None:
    csrf = login(env)
    form = {"csrf": csrf, "agent": SUPPORT.id, "tool": "payments.refund", "intent": "", "reason": "incident INC-7",
            "minutes": "15"}
    assert env.client.post("/ui/grants", data={**form, "csrf": ""}).status_code == 403
    for bad, why in [({"intent": "refund-order"}, "exactly one of tool or intent"),
                     ({"minutes": "100000"}, "review.max_grant_seconds"), ({"minutes": "soon"}, "whole number"),
                     ({"reason": ""}, "reason")]:
        r = env.client.post("/ui/grants", data={**form, **bad})
        assert r.status_code == 422 and why in r.text, (bad, r.text[-3000:])
        assert 'value="payments.refund"' in r.text  # the form keeps what was typed
    assert "grt_" not in env.client.get("/ui/grants").text

    r = env.client.post("/ui/grants", data=form)
    assert r.status_code == 201
    grant = re.search(r"Granted (grt_[A-Za-z0-9_-]+)", r.text).group(1)
    listed = env.client.get("/ui/grants", params={"needs_review": "true", "active": "true"}).text
    assert grant in listed and "needs review" in listed and "incident INC-7" in listed

    r = env.client.post(f"/ui/grants/{grant}/sign-off", data={"csrf": csrf, "note": "reviewed"})
    assert r.status_code == 200 and f"Signed off {grant}" in r.text
    assert grant not in env.client.get("/ui/grants", params={"needs_review": "true"}).text
    assert env.client.post(f"/ui/grants/{grant}/sign-off", data={"csrf": csrf}).status_code == 409
    r = env.client.post(f"/ui/grants/{grant}/revoke", data={"csrf": csrf})
    assert r.status_code == 200 and "revoked" in r.text
    assert grant not in env.client.get("/ui/grants", params={"active": "true"}).text
    assert env.client.post("/ui/grants/grt_nope/revoke", data={"csrf": csrf}).status_code == 404


# ----- replay ------------------------------------------------------------------------------
def test_replay_form_reports_changes(env: Env, tmp_path: Path) -> None:
    csrf = login(env)
    page = env.client.get("/ui/replay", params={"decision_id": env.filled["a_refund"]}).text
    assert f'value="{env.config.policy_dir}"' in page and f'value="{env.filled["a_refund"]}"' in page

    candidate = strict_refund_policy(tmp_path)
    form = {"csrf": csrf, "policy_dir": str(candidate), "intents_dir": str(env.config.intents_dir)}
    assert env.client.post("/ui/replay", data={**form, "csrf": "nope"}).status_code == 403
    r = env.client.post("/ui/replay", data=form)
    assert r.status_code == 200, r.text
    assert "allow-&gt;deny" in r.text and "hold-&gt;deny" in r.text
    assert f'<a href="/ui/decisions/{env.filled["a_refund"]}">' in r.text

    same = env.client.post("/ui/replay", data={"csrf": csrf, "decision_id": env.filled["a_refund"],
                                               "policy_dir": str(env.config.policy_dir),
                                               "intents_dir": str(env.config.intents_dir)})
    assert same.status_code == 200 and "No outcome would change" in same.text
    assert env.client.post("/ui/replay", data={**form, "decision_id": "dec_nope"}).status_code == 404
    missing = env.client.post("/ui/replay", data={**form, "policy_dir": str(tmp_path / "missing")})
    assert missing.status_code == 422 and "does not exist" in missing.text


def test_stylesheet_is_served(env: Env) -> None:
    r = env.client.get("/ui/static/style.css")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/css") and "svg.graph" in r.text


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example", "/v1/decisions", "/ui\\x"])
def test_login_never_redirects_off_the_ui(env: Env, target: str) -> None:
    r = env.client.post("/ui/login", data={"token": admin_token(env.config), "next": target}, follow_redirects=False)
    assert r.headers["location"] == "/ui/decisions"
