"""Two gateway replicas on one PostgreSQL database: shared state, single use under contention.

Both replicas are real ``intentgate serve`` processes on 127.0.0.1 with the same keys and the
same database (a fresh schema per module), ``front.stateless_http: true``, and real
subprocess upstreams.  Requests are spread over both by a round-robin transport in the test
(a load balancer in miniature), so consecutive requests of one MCP client, and concurrent
requests for one token, approval or step, land on different processes.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from sqlalchemy import create_engine, text

from intentgate.canonical import arguments_sha256
from intentgate.decide import new_id
from intentgate.keys import KeySet
from intentgate.store import DecisionRecord, Store, TokenRecord
from intentgate.tokens import ActionTokenIssuer
from tests.processes import free_port, serve, stop
from tests.test_front_http import agent_token
from tests.test_front_stdio import PARAMS, SUPPORT, make_gateway
from tests.test_review_api import admin_token
from tests.tasks import grant_args, orchestrator_token

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

TOKENS = 2_000
REDEEMERS = 32


@dataclass
class Replicas:
    ports: list[int]
    data_dir: Path
    db_url: str
    config_path: Path

    def url(self, i: int, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[i % len(self.ports)]}{path}"


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, pg_module_url: str) -> Iterator[Replicas]:
    tmp = tmp_path_factory.mktemp("replicas")
    make_gateway(tmp)  # config with four upstreams, keys, the upstreams' JWKS
    cfg_path = tmp / "intentgate.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["store"] = {"url": pg_module_url, "pool_size": 8}
    cfg["front"] = {"stateless_http": True, "rate_limit_per_second": None}
    cfg["redeem"] = {"rate_limit_per_second": None}  # 32 redeemers from one address race for every token
    cfg_path.write_text(yaml.safe_dump(cfg))
    ports = [free_port(), free_port()]
    # both at once: the second waits on the migration lock and finds the schema at head
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with ThreadPoolExecutor(2) as pool:
            starts = [pool.submit(serve, cfg_path, p, tmp / f"replica{i}.log") for i, p in enumerate(ports)]
            procs = [f.result() for f in starts if f.exception() is None]
            failed = [f.exception() for f in starts if f.exception() is not None]
        if failed:
            raise failed[0]  # type: ignore[misc]
        yield Replicas(ports, tmp, pg_module_url, cfg_path)
    finally:
        for proc in procs:
            stop(proc)


class RoundRobin(httpx2.AsyncBaseTransport):
    """Sends each request to the next replica: a load balancer with no affinity at all."""

    def __init__(self, ports: list[int]) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.ports = itertools.cycle(ports)
        self.served: Counter[int] = Counter()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        port = next(self.ports)
        self.served[port] += 1
        request.url = request.url.copy_with(port=port)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@asynccontextmanager
async def balanced_client(r: Replicas, mode: str = "auto") -> AsyncIterator[tuple[Client, RoundRobin]]:
    lb = RoundRobin(r.ports)
    headers = {"Authorization": f"Bearer {agent_token(r.data_dir)}"}
    async with httpx2.AsyncClient(transport=lb, headers=headers, timeout=30) as http:
        async with Client(streamable_http_client(r.url(0, "/mcp"), http_client=http), mode=mode) as client:
            yield client, lb


async def _walk_to_refund(client: Client, data_dir: Path) -> str:
    r = await client.call_tool("intentgate__begin_task", grant_args(data_dir, SUPPORT, "refund-order", PARAMS,
                                                                    "replica test"))
    assert not r.is_error, r.content
    task = r.structured_content["task"]
    for tool, args, step in (("tickets__get_ticket", {"ticket_id": "TCK-1"}, "read_ticket"),
                             ("orders__get_order", {"order_id": "ORD-7"}, "lookup")):
        r = await client.call_tool(tool, args, meta={"intentgate/task": task, "intentgate/step": step})
        assert not r.is_error, r.content
    return task


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_an_mcp_session_works_with_every_request_on_another_replica(replicas: Replicas, mode: str) -> None:
    async with balanced_client(replicas, mode) as (client, lb):
        task = await _walk_to_refund(client, replicas.data_dir)
        r = await client.call_tool("payments__refund", {"order_id": "ORD-7", "amount": 5, "currency": "EUR"},
                                   meta={"intentgate/task": task, "intentgate/step": "refund"})
        assert not r.is_error, r.content
        # a step out of order is refused whichever replica sees it: the history is shared
        r = await client.call_tool("orders__get_order", {"order_id": "ORD-7"},
                                   meta={"intentgate/task": task, "intentgate/step": "lookup"})
        assert r.is_error and "step_out_of_order:lookup" in r.structured_content["reasons"]
    assert len(lb.served) == 2 and min(lb.served.values()) >= 3, lb.served


async def _decide(http: httpx2.AsyncClient, r: Replicas, i: int, token: str, task: str, amount: float) -> dict:
    resp = await http.post(
        r.url(i, "/v1/decide"), headers={"Authorization": f"Bearer {token}"},
        json={"task": task, "step": "refund", "upstream": "payments", "tool": "refund",
              "arguments": {"order_id": "ORD-7", "amount": amount, "currency": "EUR"}},
    )
    assert resp.status_code == 200, resp.text
    return resp.json()


async def test_a_single_use_step_is_allowed_once_across_replicas(replicas: Replicas) -> None:
    async with balanced_client(replicas) as (client, _):
        task = await _walk_to_refund(client, replicas.data_dir)
    token = agent_token(replicas.data_dir)
    async with httpx2.AsyncClient(timeout=30) as http:
        verdicts = await asyncio.gather(*(_decide(http, replicas, i, token, task, 7) for i in range(16)))
    outcomes = Counter(v["outcome"] for v in verdicts)
    assert outcomes == {"allow": 1, "deny": 15}, verdicts
    for v in verdicts:
        if v["outcome"] == "deny":  # lost the race, or came after the winner moved the task on
            assert {x.split(":")[0] for x in v["reasons"]} <= {"concurrent_step", "step_out_of_order"}, v


async def test_an_approval_is_granted_once_and_used_once_across_replicas(replicas: Replicas) -> None:
    async with balanced_client(replicas) as (client, _):
        task = await _walk_to_refund(client, replicas.data_dir)
    token = agent_token(replicas.data_dir)
    config = yaml.safe_load(replicas.config_path.read_text())
    from intentgate.config import load_config

    reviewer = admin_token(load_config(replicas.config_path))
    assert config["store"]["url"] == replicas.db_url
    async with httpx2.AsyncClient(timeout=30) as http:
        held = await _decide(http, replicas, 0, token, task, 1500)
        assert held["outcome"] == "hold" and held["approval_id"], held

        async def approve(i: int) -> int:
            resp = await http.post(replicas.url(i, f"/v1/approvals/{held['approval_id']}/approve"),
                                   headers={"Authorization": f"Bearer {reviewer}"}, json={"note": f"reviewer {i}"})
            return resp.status_code

        codes = Counter(await asyncio.gather(*(approve(i) for i in range(REDEEMERS))))
        assert codes == {200: 1, 409: REDEEMERS - 1}, codes

        # the agent retries the identical call on both replicas at once: one allow, once
        retries = await asyncio.gather(*(_decide(http, replicas, i, token, task, 1500) for i in range(8)))
    outcomes = Counter(v["outcome"] for v in retries)
    assert outcomes["allow"] == 1, retries


async def test_every_token_is_redeemed_exactly_once_through_both_replicas(replicas: Replicas) -> None:
    """32 redeemers each present all 2,000 tokens, each request to the next replica."""
    keys = KeySet.open_or_create(replicas.data_dir / "keys" / "action")
    issuer = ActionTokenIssuer(keys, default_ttl=3600)
    store = Store.open(replicas.db_url, timeout=30.0, pool_size=4)
    arguments = {"order_id": "ORD-7", "amount": 1, "currency": "EUR"}
    digest = arguments_sha256(arguments)
    agent = "spiffe://example.org/agent/support-1"
    now = time.time()
    minted = []
    try:
        for n in range(TOKENS):
            task = f"tsk_redeem_{n}"
            t = issuer.mint(agent=agent, task_id=task, intent="refund-order", step="refund", upstream="payments",
                            tool="payments.refund", arguments_sha256=digest, task_expires_at=now + 3600)
            decision = DecisionRecord(id=new_id("dec"), at=now, agent=agent, task_id=task, step="refund",
                                      upstream="payments", tool="payments.refund", outcome="allow", reasons=[],
                                      token_jti=t.jti, token_expires_at=t.expires_at)
            await store.commit_decision(decision, token=TokenRecord(
                jti=t.jti, decision_id=decision.id, task_id=task, agent=agent, audience="payments",
                tool="payments.refund", arguments_sha256=digest, issued_at=t.issued_at, expires_at=t.expires_at))
            minted.append(t)
        seq_before = store.verify_chain().head_seq

        results: Counter[tuple[str, int]] = Counter()
        refusals: Counter[str] = Counter()
        limits = httpx2.Limits(max_connections=4, max_keepalive_connections=4)

        async def redeemer(k: int) -> None:
            order = list(range(TOKENS))
            random.Random(k).shuffle(order)
            async with httpx2.AsyncClient(timeout=60, limits=limits) as http:
                for i, n in enumerate(order):
                    resp = await http.post(replicas.url(k + i, "/v1/tokens/redeem"), json={
                        "token": minted[n].token, "audience": "payments", "tool": "payments.refund",
                        "arguments": arguments})
                    results[(minted[n].jti, resp.status_code)] += 1
                    if resp.status_code != 200:
                        refusals[resp.json()["error"]] += 1

        await asyncio.gather(*(redeemer(k) for k in range(REDEEMERS)))

        honoured = Counter(jti for (jti, code), count in results.items() if code == 200 for _ in range(count))
        assert len(honoured) == TOKENS and set(honoured.values()) == {1}  # every token exactly once
        assert sum(results.values()) == TOKENS * REDEEMERS
        assert refusals == {"token_replayed": TOKENS * (REDEEMERS - 1)}, refusals

        def counts(conn):  # type: ignore[no-untyped-def]
            status = dict(conn.execute(text("SELECT status, count(*) FROM tokens WHERE task_id LIKE "
                                            "'tsk_redeem_%' GROUP BY status")).all())
            denied = conn.execute(text("SELECT count(*) FROM decisions WHERE kind = 'token/redeem' "
                                       "AND reasons::text LIKE '%token_replayed%'")).scalar()
            return status, denied

        status, denied = store.db.run_sync(counts)
        assert status == {"consumed": TOKENS}
        assert denied == TOKENS * (REDEEMERS - 1)  # every refusal is in the decision log
        report = store.verify_chain()
        assert report.ok and report.head_seq >= seq_before + TOKENS * (REDEEMERS - 1)
    finally:
        store.close()


async def test_a_budget_is_spent_exactly_once_across_replicas(replicas: Replicas) -> None:
    """16 refunds of 300 EUR at once, each in its own task, half on each replica, for an agent with
    2,000 EUR a day (refund-order's budget): six are allowed, the rest held; 1,800 EUR spent."""
    agent = "spiffe://example.org/agent/support-budget"
    token = agent_token(replicas.data_dir, agent)
    async with httpx2.AsyncClient(timeout=60) as http:
        tasks = []
        for i in range(16):
            async with httpx2.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {token}"}) as agent_http:
                r = await http.post(replicas.url(i, "/v1/tasks"), json={
                    "agent": agent, "intent": "refund-order", "params": PARAMS, "reason": "budget race"},
                    headers={"Authorization": f"Bearer {orchestrator_token(replicas.data_dir)}"})
                assert r.status_code == 201, r.text
                task = r.json()["task"]
                for step, upstream, tool, args in (("read_ticket", "tickets", "get_ticket", {"ticket_id": "TCK-1"}),
                                                   ("lookup", "orders", "get_order", {"order_id": "ORD-7"})):
                    d = await agent_http.post(replicas.url(i, "/v1/decide"), json={
                        "task": task, "step": step, "upstream": upstream, "tool": tool, "arguments": args})
                    assert d.json()["outcome"] == "allow", d.text
            tasks.append(task)
        verdicts = await asyncio.gather(*(_decide(http, replicas, i, token, task, 300) for i, task in enumerate(tasks)))
    outcomes = Counter(v["outcome"] for v in verdicts)
    assert outcomes == {"allow": 6, "hold": 10}, verdicts
    assert all(v["reasons"] == ["budget_exceeded:refund_total"] for v in verdicts if v["outcome"] == "hold")
    eng = create_engine(replicas.db_url)
    with eng.connect() as conn:
        spent = conn.execute(text("SELECT sum(amount) FROM budget_usage WHERE scope LIKE :a"),
                             {"a": f"%{agent}%"}).scalar()
    eng.dispose()
    assert spent == 1800
