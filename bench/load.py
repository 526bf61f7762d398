"""Load benchmark: N concurrent agents, each running the refund workflow over and over.

Every agent (its own workload identity, its own MCP client over Streamable HTTP) repeats the
`refund-order` workflow of ``intents/``: ``intentgate__begin_task``, then ``read_ticket``,
``lookup``, ``refund`` and ``comment`` (the terminal step, which completes the task and
revokes whatever tokens it had left), for a fixed time, against:

(a) one ``intentgate serve`` on SQLite;
(b) two ``intentgate serve`` replicas on one PostgreSQL database (a fresh schema, dropped
    afterwards; skipped with a message when PostgreSQL does not answer).  Each agent's HTTP
    requests alternate between the replicas, request by request: the replicas run with
    ``front.stateless_http: true``, so any replica can take any request.

Both setups run stateless, with the per-agent rate limiter off (``front.rate_limit_per_second:
null``), in front of the same three tool servers (``tests/servers/tool_server.py --http``).
The baseline, in the same run: the workflow's four tool calls made directly to those servers,
no gateway, one agent.  Prints calls/s (every MCP call, ``begin_task`` included), workflows/s,
p50/p99 latency per call, errors and the gateway processes' resident memory (VmRSS, read from
/proc at the end of each run).  Exits 1 if any call failed.

The load generator shares the machine with everything it measures.

Usage: ``python bench/load.py [--agents 1,8,64] [--seconds 10] [--quick] [--skip-postgres]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from intentgate.identity import DevIssuer  # noqa: E402
from intentgate.keys import KeySet  # noqa: E402

PG_URL = os.environ.get("INTENTGATE_BENCH_PG", "postgresql+psycopg://root@127.0.0.1:5432/test")
UPSTREAMS = ("tickets", "orders", "payments")
console = Console(width=120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen[bytes], what: str, ok: tuple[int, ...] = ()) -> None:
    """Until ``url`` answers (with one of ``ok`` when given); fail if ``proc`` exits."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode})")
        try:
            r = httpx2.get(url, timeout=2)
            if not ok or r.status_code in ok:
                return
        except httpx2.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not come up at {url}")


def decisions_taken(port: int) -> int:
    """How many decisions this gateway process made, from its /metrics."""
    text = httpx2.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("intentgate_decisions_total{")))


def rss_mb(pid: int) -> float:
    """Resident set size of a process, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Processes:
    """Subprocesses started by the benchmark, stopped in reverse order."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=out,
                                    env={**os.environ, **(env or {})})
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)


# ----- agents ------------------------------------------------------------------------
class RoundRobin(httpx2.AsyncHTTPTransport):
    """Sends each request to the next of ``ports`` (same host and path): a load balancer."""

    def __init__(self, ports: list[int]) -> None:
        super().__init__()
        self.ports = ports
        self.next = 0

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        port = self.ports[self.next % len(self.ports)]
        self.next += 1
        request.url = request.url.copy_with(port=port)
        return await super().handle_async_request(request)


@asynccontextmanager
async def mcp_session(url: str, token: str | None, ports: list[int] | None = None) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    transport = RoundRobin(ports) if ports and len(ports) > 1 else None
    async with httpx2.AsyncClient(headers=headers, timeout=60, transport=transport) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            yield client


@dataclass
class Window:
    """When the measured run ends: set once every agent's session is open."""

    until: float = float("inf")


@dataclass
class Samples:
    latencies_ms: list[float] = field(default_factory=list)
    workflows: int = 0
    ready: int = 0  # agents whose sessions are open
    errors: list[str] = field(default_factory=list)


def workflow_calls(n: int) -> tuple[dict[str, str], list[tuple[str, str, dict[str, Any], str]]]:
    """The task parameters and the (upstream, tool, arguments, step) of one refund workflow."""
    ticket, order = f"TCK-{n}", f"ORD-{n}"
    return {"ticket_id": ticket, "order_id": order}, [
        ("tickets", "get_ticket", {"ticket_id": ticket}, "read_ticket"),
        ("orders", "get_order", {"order_id": order}, "lookup"),
        ("payments", "refund", {"order_id": order, "amount": 25, "currency": "EUR"}, "refund"),
        ("tickets", "add_comment", {"ticket_id": ticket, "body": "refunded 25 EUR"}, "comment"),
    ]


async def timed(samples: Samples, coro: Any) -> Any:
    t = time.perf_counter()
    try:
        r = await coro
    except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
        samples.errors.append(f"{type(exc).__name__}: {exc}"[:300])
        return None
    samples.latencies_ms.append((time.perf_counter() - t) * 1000)
    if r.is_error:
        samples.errors.append(str(r.structured_content or r.content)[:300])
        return None
    return r


async def gated_agent(url: str, token: str, ports: list[int], agent: int, window: Window, start: asyncio.Event,
                      samples: Samples) -> None:
    async with mcp_session(url, token, ports) as client:
        await client.list_tools()
        samples.ready += 1
        await start.wait()
        n = agent * 10_000_000
        while time.perf_counter() < window.until:
            n += 1
            params, calls = workflow_calls(n)
            r = await timed(samples, client.call_tool(
                "intentgate__begin_task", {"intent": "refund-order", "params": params, "reason": "load test"}))
            if r is None:
                continue
            task = r.structured_content["task"]
            for upstream, tool, args, step in calls:
                meta = {"intentgate/task": task, "intentgate/step": step}
                if await timed(samples, client.call_tool(f"{upstream}__{tool}", args, meta=meta)) is None:
                    break
            else:
                samples.workflows += 1


async def direct_agent(urls: dict[str, str], agent: int, window: Window, start: asyncio.Event,
                       samples: Samples) -> None:
    async with mcp_session(urls["tickets"], None) as tickets, mcp_session(urls["orders"], None) as orders, \
            mcp_session(urls["payments"], None) as payments:
        clients = {"tickets": tickets, "orders": orders, "payments": payments}
        samples.ready += 1
        await start.wait()
        n = agent * 10_000_000
        while time.perf_counter() < window.until:
            n += 1
            for upstream, tool, args, _ in workflow_calls(n)[1]:
                if await timed(samples, clients[upstream].call_tool(tool, args)) is None:
                    break
            else:
                samples.workflows += 1


async def run_load(n: int, seconds: float, make_agent: Any) -> tuple[Samples, float]:
    """Start ``n`` agents (sessions opened before the clock starts), run them for ``seconds``."""
    samples, start, window = Samples(), asyncio.Event(), Window()
    tasks = [asyncio.create_task(make_agent(i, window, start, samples)) for i in range(1, n + 1)]
    deadline = time.perf_counter() + 120
    while samples.ready < n and not any(t.done() for t in tasks) and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)  # every session open before the clock starts
    t0 = time.perf_counter()
    window.until = t0 + seconds
    start.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    wall = time.perf_counter() - t0
    for r in results:
        if isinstance(r, BaseException):
            samples.errors.append(f"agent failed: {type(r).__name__}: {r}"[:300])
    return samples, wall


@dataclass
class Row:
    setup: str
    agents: int
    calls_per_s: float
    workflows_per_s: float
    p50: float
    p99: float
    errors: int
    rss: str
    first_error: str | None = None


def summarize(setup: str, n: int, samples: Samples, wall: float, rss: str) -> Row:
    ms = sorted(samples.latencies_ms) or [float("nan")]
    return Row(setup, n, len(samples.latencies_ms) / wall, samples.workflows / wall, statistics.median(ms),
               ms[min(len(ms) - 1, int(len(ms) * 0.99))], len(samples.errors), rss,
               samples.errors[0] if samples.errors else None)


# ----- setups ------------------------------------------------------------------------
@dataclass
class Bench:
    work: Path
    procs: Processes
    upstream_urls: dict[str, str]


def write_config(bench: Bench, name: str, store_url: str | None) -> tuple[Path, Path]:
    """A gateway config and data directory (keys created here, shared by the replicas)."""
    data = bench.work / name
    data.mkdir()
    KeySet.open_or_create(data / "keys" / "action")
    KeySet.open_or_create(data / "keys" / "agent-issuer")
    cfg: dict[str, Any] = {
        "intents_dir": str(bench.work / "intents"), "policy_dir": str(ROOT / "opa"), "data_dir": str(data),
        "upstreams": [{"name": n, "url": u} for n, u in bench.upstream_urls.items()],
        "front": {"rate_limit_per_second": None, "stateless_http": True},
    }
    if store_url:
        cfg["store"] = {"url": store_url}
    path = data / "intentgate.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, data


def start_gateway(bench: Bench, config: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = bench.procs.start([sys.executable, "-m", "intentgate", "serve", "--config", str(config),
                              "--port", str(port)], log)
    wait_http(f"http://127.0.0.1:{port}/healthz", proc, f"intentgate ({log})", ok=(200,))
    return proc, port


async def measure_gateway(bench: Bench, setup: str, data: Path, procs: list[subprocess.Popen[bytes]],
                          ports: list[int], agents: list[int], seconds: float) -> list[Row]:
    issuer = DevIssuer(KeySet.open_or_create(data / "keys" / "agent-issuer"))
    url = f"http://127.0.0.1:{ports[0]}/mcp"
    rows = []
    for n in agents:
        tokens = {i: issuer.mint(f"spiffe://example.org/agent/support-{i}", ttl_seconds=3600) for i in range(1, n + 1)}

        async def agent(i: int, window: Window, start: asyncio.Event, samples: Samples) -> None:
            await gated_agent(url, tokens[i], ports, i, window, start, samples)

        console.print(f"{setup}: {n} agent(s) for {seconds:g} s ...")
        samples, wall = await run_load(n, seconds, agent)
        rss = " + ".join(f"{rss_mb(p.pid):.0f}" for p in procs)
        rows.append(summarize(setup, n, samples, wall, rss))
    return rows


@contextmanager
def postgres_schema() -> Iterator[str | None]:
    """A URL whose search_path is a fresh schema (dropped afterwards), or None if unreachable."""
    from sqlalchemy import create_engine, text

    try:
        admin = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with admin.connect() as c:
            c.execute(text("select 1"))
    except Exception as exc:  # noqa: BLE001
        console.print(f"[yellow]PostgreSQL not reachable at {PG_URL} ({type(exc).__name__}): "
                      "skipping (b) two replicas on PostgreSQL[/yellow]")
        yield None
        return
    schema = f"load_{uuid.uuid4().hex[:12]}"
    with admin.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        sep = "&" if "?" in PG_URL else "?"
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agents", default="1,8,64", help="comma-separated numbers of concurrent agents (default 1,8,64)")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured time per (setup, agents) run (default 10)")
    ap.add_argument("--quick", action="store_true", help="agents 1,8 for 3 s each")
    ap.add_argument("--skip-postgres", action="store_true", help="only the SQLite setup and the baseline")
    ap.add_argument("--keep", metavar="DIR", type=Path, help="work in DIR (configs, databases, logs) and keep it")
    args = ap.parse_args()
    agents = [1, 8] if args.quick else [int(x) for x in args.agents.split(",") if x.strip()]
    seconds = 3.0 if args.quick else args.seconds
    if not agents or min(agents) < 1:
        ap.error("--agents: give positive numbers")

    tmp = None
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        work = args.keep
    else:
        tmp = tempfile.TemporaryDirectory(prefix="intentgate-load-")
        work = Path(tmp.name)
    procs = Processes()
    rows: list[Row] = []
    try:
        (work / "intents").mkdir(exist_ok=True)
        # the shipped intent, but begun by the agent itself (it ships as `begin: [issuer]`: the
        # bench's agents call intentgate__begin_task) and without its refund budget, which a
        # loop of refunds would exhaust within seconds (bench/decide.py measures budgets)
        intent = yaml.safe_load((ROOT / "intents" / "refund-order.yaml").read_text())
        intent = {k: v for k, v in intent.items() if k != "budgets"}
        (work / "intents" / "refund-order.yaml").write_text(yaml.safe_dump({**intent, "begin": ["agent"]}))
        urls = {}
        for name in UPSTREAMS:
            port = free_port()
            proc = procs.start([sys.executable, str(ROOT / "tests/servers/tool_server.py"), "--name", name,
                                "--http", str(port)], work / f"upstream-{name}.log")
            urls[name] = f"http://127.0.0.1:{port}/mcp"
            wait_http(urls[name], proc, f"upstream {name}")
        bench = Bench(work, procs, urls)

        console.print(f"baseline: the workflow's tool calls direct to the upstreams, 1 agent for {seconds:g} s ...")

        async def direct(i: int, window: Window, start: asyncio.Event, samples: Samples) -> None:
            await direct_agent(urls, i, window, start, samples)

        samples, wall = await run_load(1, seconds, direct)
        rows.append(summarize("direct to upstreams (no gateway)", 1, samples, wall, "-"))

        config, data = write_config(bench, "sqlite", None)
        gw, port = start_gateway(bench, config, work / "gateway-sqlite.log")
        rows += await measure_gateway(bench, "(a) 1 gateway, SQLite", data, [gw], [port], agents, seconds)
        procs.stop(gw)

        if args.skip_postgres:
            console.print("[yellow]--skip-postgres: skipping (b) two replicas on PostgreSQL[/yellow]")
        else:
            with postgres_schema() as pg_url:
                if pg_url is not None:
                    config, data = write_config(bench, "postgres", pg_url)
                    # one after the other: the first creates the schema, the second finds it
                    gw1, port1 = start_gateway(bench, config, work / "gateway-pg-1.log")
                    gw2, port2 = start_gateway(bench, config, work / "gateway-pg-2.log")
                    try:
                        rows += await measure_gateway(bench, "(b) 2 replicas, PostgreSQL", data, [gw1, gw2],
                                                      [port1, port2], agents, seconds)
                        split = [decisions_taken(p) for p in (port1, port2)]
                        console.print(f"decisions taken by each replica: {split[0]} and {split[1]}")
                    finally:
                        procs.stop(gw2)
                        procs.stop(gw1)
    finally:
        procs.stop_all()
        if tmp is not None:
            tmp.cleanup()

    table = Table(title=f"refund workflow (begin + 4 steps), {seconds:g} s per run; latency per MCP call")
    for col in ("setup", "agents", "calls/s", "workflows/s", "p50 ms", "p99 ms", "errors", "gateway RSS MB"):
        table.add_column(col, justify="left" if col == "setup" else "right")
    for r in rows:
        table.add_row(r.setup, str(r.agents), f"{r.calls_per_s:.0f}", f"{r.workflows_per_s:.1f}", f"{r.p50:.2f}",
                      f"{r.p99:.2f}", str(r.errors), r.rss)
    console.print(table)
    failed = [r for r in rows if r.errors]
    for r in failed:
        console.print(f"[red]{r.setup}, {r.agents} agent(s): {r.errors} error(s); first: {r.first_error}[/red]")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
