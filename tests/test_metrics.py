"""Prometheus metrics: what the store committed, counted exactly (real pipeline, real store), and
what awaits reviewers, read from the store by every replica at each scrape (real app)."""

from __future__ import annotations

import asyncio
import platform
import time
from importlib.metadata import version
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event

from intentgate.clock import Clock, FrozenClock, SystemClock
from intentgate.config import GatewayConfig, load_config
from intentgate.errors import ConfigError
from intentgate.identity import DevIssuer
from intentgate.keys import KeySet
from intentgate.metrics import SESSION_AGENTS, Metrics
from intentgate.review import AdminTokenIssuer
from intentgate.runtime import Runtime
from intentgate.sessions import SessionGuard
from intentgate.store.queries import ReviewBacklog
from intentgate.web import create_app
from tests.conftest import INTENTS_DIR, POLICY_DIR, ROOT
from tests.test_approvals import BIG, clock, held_refund, policy_dir, rt  # noqa: F401 - shared fixtures
from tests.test_decide import SUPPORT, begin_refund, call

HELLO = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
ACCEPT = "application/json, text/event-stream"


def samples(rt: Runtime) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(rt.metrics.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_decisions_tokens_and_latency_are_counted(rt: Runtime) -> None:
    task = await begin_refund(rt)
    read = await rt.decider.decide(call(task, "read_ticket", "tickets.get_ticket", {"ticket_id": "TCK-1"}))
    await rt.verifier.verify_and_consume(read.token.token, tool="tickets.get_ticket", arguments={"ticket_id": "TCK-1"},
                                         audience="tickets", ledger=rt.store)
    await rt.decider.decide(call(task, "lookup", "orders.get_order", {"order_id": "ORD-7"}))  # token left unused
    await rt.decider.decide(call(task, "comment", "tickets.add_comment", {"ticket_id": "TCK-1", "body": "x"}))
    await rt.decider.decide(call(task, "refund", "payments.refund", BIG))  # held
    await rt.decider.end_task(SUPPORT, task)  # revokes the unused lookup token

    found = samples(rt)
    assert value(found, "intentgate_decisions_total", kind="tools/call", outcome="allow", intent="refund-order") == 2
    assert value(found, "intentgate_decisions_total", kind="tools/call", outcome="deny", intent="refund-order") == 1
    assert value(found, "intentgate_decisions_total", kind="tools/call", outcome="hold", intent="refund-order") == 1
    assert value(found, "intentgate_decisions_total", kind="task/begin", outcome="allow", intent="refund-order") == 1
    assert value(found, "intentgate_decisions_total", kind="task/end", outcome="allow", intent="refund-order") == 1
    assert value(found, "intentgate_decision_reasons_total", outcome="deny", reason="step_out_of_order") == 1
    assert value(found, "intentgate_decision_reasons_total", outcome="hold", reason="policy_hold") == 1
    assert value(found, "intentgate_decision_reasons_total", outcome="hold", reason="policy") == 1  # policy:large_refund
    assert value(found, "intentgate_tokens_total", event="minted") == 2
    assert value(found, "intentgate_tokens_total", event="consumed") == 1
    assert value(found, "intentgate_tokens_total", event="revoked") == 1
    assert value(found, "intentgate_decision_seconds_count", outcome="allow") == 2
    assert value(found, "intentgate_decision_seconds_count", outcome="deny") == 1
    assert value(found, "intentgate_decision_seconds_bucket", outcome="allow", le="+Inf") == 2


# ----- what awaits reviewers, read from the store at each scrape ------------------------------
def scraped(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = client.get("/metrics")
    assert r.status_code == 200
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            assert not s.name.endswith("_created") and all(v != "" for v in s.labels.values()), s
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def backlog(found: dict) -> tuple[float | None, ...]:
    return tuple(found.get((name, ())) for name in
                 ("intentgate_approvals_pending", "intentgate_grants_active", "intentgate_grants_unsigned"))


async def _held_calls(config: GatewayConfig, clock: Clock, count: int) -> list[str]:
    """``count`` held refunds decided by a gateway process that is then gone."""
    runtime = await Runtime.open(config, clock=clock)
    try:
        return [(await held_refund(runtime))[1] for _ in range(count)]
    finally:
        await runtime.aclose()


def test_backlog_gauges_come_from_the_store_on_every_replica(tmp_path: Path, db_url: str) -> None:
    config = load_config(None, data_dir=tmp_path, intents_dir=INTENTS_DIR, policy_dir=POLICY_DIR)
    config = config.model_copy(update={"store": config.store.model_copy(update={"url": db_url}),
                                       "metrics": config.metrics.model_copy(update={"backlog_max_age_seconds": 0})})
    two_hours_ago = FrozenClock(time.time() - 7200)
    asyncio.run(_held_calls(config, two_hours_ago, 1))  # held, pending, but expired an hour ago
    first, _ = asyncio.run(_held_calls(config, SystemClock(), 2))
    admin = {"Authorization": "Bearer " + AdminTokenIssuer(KeySet.open_or_create(config.admin_keys_dir)).mint(
        "alice", 600)}
    grant = {"agent": SUPPORT.id, "reason": "incident INC-7", "duration_seconds": 900}

    # two replicas started after the calls were held, on the same database
    local = "http://127.0.0.1:8080"  # a host the MCP endpoint accepts
    with TestClient(create_app(config), base_url=local) as a, TestClient(create_app(config), base_url=local) as b:
        for replica in (a, b):
            found = scraped(replica)
            assert backlog(found) == (2, 0, 0)
            assert value(found, "intentgate_decisions_total", kind="tools/call", outcome="hold",
                         intent="refund-order") == 0  # counters are this process's own
        assert a.post(f"/v1/approvals/{first}/approve", headers=admin).status_code == 200
        assert backlog(scraped(b)) == (1, 0, 0)
        by_tool = a.post("/v1/grants", json={**grant, "tool": "payments.refund"}, headers=admin).json()
        by_intent = a.post("/v1/grants", json={**grant, "intent": "refund-order"}, headers=admin).json()
        assert backlog(scraped(b)) == (1, 2, 2)
        assert a.post(f"/v1/grants/{by_tool['id']}/sign-off", headers=admin).status_code == 200
        assert backlog(scraped(b)) == (1, 2, 1)
        assert a.post(f"/v1/grants/{by_intent['id']}/revoke", headers=admin).status_code == 200
        assert backlog(scraped(a)) == backlog(scraped(b)) == (1, 1, 1)  # revoked: still to be signed off

        # an MCP session, and a decision of no intent: labelled by agent, and "none"
        token = DevIssuer(KeySet.open_or_create(config.agent_issuer_keys_dir)).mint(SUPPORT.id)
        opened = a.post("/mcp", json=HELLO, headers={"Authorization": f"Bearer {token}", "Accept": ACCEPT})
        assert opened.status_code == 200 and opened.headers["mcp-session-id"]
        found = scraped(a)
        assert value(found, "intentgate_sessions", agent=SUPPORT.id) == 1
        assert not [k for k in scraped(b) if k[0] == "intentgate_sessions"]  # sessions are per process
        r = a.post("/v1/decide", headers={"Authorization": f"Bearer {token}"}, json={
            "task": "tsk_nope", "step": "lookup", "upstream": "orders", "tool": "get_order", "arguments": {}})
        assert r.json()["reasons"] == ["unknown_task"]
        assert value(scraped(a), "intentgate_decisions_total", kind="tools/call", outcome="deny", intent="none") == 1


def test_backlog_gauges_are_left_out_when_the_store_cannot_answer(tmp_path: Path) -> None:
    config = load_config(None, data_dir=tmp_path, intents_dir=INTENTS_DIR, policy_dir=POLICY_DIR)
    config = config.model_copy(update={"metrics": config.metrics.model_copy(update={"backlog_max_age_seconds": 0})})
    with TestClient(create_app(config)) as client:
        assert backlog(scraped(client)) == (0, 0, 0)
        client.app.state.runtime.store.db.close()  # type: ignore[attr-defined]
        found = scraped(client)
        assert backlog(found) == (None, None, None)
        assert value(found, "intentgate_build_info", version=version("intentgate"), python=platform.python_version())


def test_sessions_by_agent_name_at_most_the_top_agents() -> None:
    guard = SessionGuard(max_per_agent=100, starts_per_minute=1000, clock=SystemClock())
    for i in range(SESSION_AGENTS + 5):
        for n in range(i + 1):  # agent i holds i + 1 sessions
            guard.opened(f"sid-{i}-{n}", f"spiffe://example.org/agent/a{i}")
    counts = guard.by_agent(SESSION_AGENTS)
    assert len(counts) == SESSION_AGENTS + 1
    assert counts["other"] == sum(range(1, 6)) and counts[f"spiffe://example.org/agent/a{SESSION_AGENTS + 4}"] == 15
    assert sum(counts.values()) == sum(range(1, SESSION_AGENTS + 6))
    rendered = [s for f in text_string_to_metric_families(Metrics().render(sessions=counts).decode())
                for s in f.samples if s.name == "intentgate_sessions"]
    assert {s.labels["agent"]: s.value for s in rendered} == counts


def test_every_series_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    documented = readme[readme.index("`GET /metrics`"):readme.index("### Reviewer web UI")]
    exposed = Metrics().render(ReviewBacklog(0, 0, 0), {SUPPORT.id: 1}).decode()
    names = {s.name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
             for f in text_string_to_metric_families(exposed) for s in f.samples}
    assert "intentgate_sessions" in names and "intentgate_grants_unsigned" in names
    assert not [n for n in sorted(names) if f"`{n}" not in documented]


def test_a_flood_of_scrapes_reads_the_backlog_once_per_interval(tmp_path: Path) -> None:
    config = load_config(None, data_dir=tmp_path, intents_dir=INTENTS_DIR, policy_dir=POLICY_DIR)
    config = config.model_copy(update={"metrics": config.metrics.model_copy(update={"backlog_max_age_seconds": 1.0})})
    reads: list[str] = []
    with TestClient(create_app(config)) as client:
        engine = client.app.state.runtime.store.db.engine  # type: ignore[attr-defined]

        def seen(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
            if "FROM approvals" in statement:
                reads.append(statement)

        event.listen(engine, "before_cursor_execute", seen)
        started = time.monotonic()
        for _ in range(60):
            assert backlog(scraped(client)) == (0, 0, 0)
        elapsed = time.monotonic() - started
        assert 1 <= len(reads) <= int(elapsed / config.metrics.backlog_max_age_seconds) + 1, len(reads)

        asyncio.run(_held_calls(config, SystemClock(), 1))  # another process holds a call
        assert backlog(scraped(client))[0] in (0, 1)  # within the interval: the read before it, or a new one
        time.sleep(config.metrics.backlog_max_age_seconds)
        before = len(reads)
        assert backlog(scraped(client)) == (1, 0, 0)  # the interval has passed: read again
        assert len(reads) == before + 1


def test_a_metrics_token_file_makes_the_scrape_need_it(tmp_path: Path) -> None:
    (tmp_path / "metrics-token").write_text("s3cret-scrape-token\n")
    config = load_config(None, data_dir=tmp_path, intents_dir=INTENTS_DIR, policy_dir=POLICY_DIR)
    config = config.model_copy(update={"metrics": config.metrics.model_copy(
        update={"token_file": tmp_path / "metrics-token"})})
    with TestClient(create_app(config)) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0"},
                        {"Authorization": "Bearer s3cret-scrape-token-and-more"}):
            r = client.get("/metrics", headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
            assert "intentgate_" not in r.text
        r = client.get("/metrics", headers={"Authorization": "Bearer s3cret-scrape-token"})
        assert r.status_code == 200 and "intentgate_build_info" in r.text
        assert client.get("/healthz").status_code == 200  # nothing else needs it


def test_a_metrics_token_file_that_cannot_be_read_stops_the_start(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("  \n")
    for name, problem in (("missing", "metrics.token_file"), ("empty", "is empty")):
        config = load_config(None, data_dir=tmp_path, intents_dir=INTENTS_DIR, policy_dir=POLICY_DIR)
        config = config.model_copy(update={"metrics": config.metrics.model_copy(update={"token_file": tmp_path / name})})
        with pytest.raises(ConfigError, match=problem):
            create_app(config)


def test_a_relative_metrics_token_file_is_read_beside_the_config(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "scrape").write_text("tok")
    (tmp_path / "intentgate.yaml").write_text("metrics: {token_file: secrets/scrape}\n")
    config = load_config(tmp_path / "intentgate.yaml")
    assert config.metrics.token_file == tmp_path / "secrets" / "scrape" and config.metrics.token() == "tok"
