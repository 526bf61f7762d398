"""End-to-end benchmark: the same tool call on the same upstream, three ways, in one run.

(a) direct to the upstream over Streamable HTTP;
(b) through FastMCP's proxy (`create_proxy(url, mode="auto")`, fastmcp 4.1.2), which gates nothing;
(c) through IntentGate (`intentgate serve`), gating every call: workflow, Rego, token mint,
    durable decision, token burn, forward.

Each way: N sequential calls from one client, then 8 concurrent clients.  Prints p50/p99,
calls/s, the gateway process's CPU per call (from /proc) and the ratios to direct and to FastMCP.
``--lean-off`` also runs a second gateway whose upstream has ``lean: false`` (every request
through the SDK's client), measured right after the first.  Needs `pip install -e '.[bench]'`.
Usage: ``python bench/e2e.py [--calls 1000] [--clients 8] [--lean-off]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
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

AGENT = "spiffe://example.org/agent/bench-1"
MAX_CALLS = 1000  # the most an intent step allows
INTENT = {
    "name": "bench-lookup", "version": "1", "agents": ["spiffe://example.org/agent/bench-*"], "begin": ["agent"],
    "params": {"order_id": {"type": "string"}}, "ttl_seconds": 3600, "start": ["lookup"],
    "steps": {"lookup": {"tool": "orders.get_order", "arguments": {"order_id": {"bind": "params.order_id"}},
                         "next": ["lookup", "done"], "max_calls": MAX_CALLS},
              "done": {"tool": "orders.get_order", "arguments": {"order_id": {"bind": "params.order_id"}}}},
}

FASTMCP_PROXY = """
import sys
from fastmcp.server import create_proxy
proxy = create_proxy(sys.argv[1], mode="auto")
proxy.run(transport="http", host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", show_banner=False)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode})")
        try:
            httpx2.get(url, timeout=1)
            return
        except httpx2.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{what} did not come up at {url}")


def cpu_seconds(pid: int | None) -> float:
    """User and system CPU so far of process ``pid`` and its descendants, reaped children included
    (0 without one): a proxy that spawns workers is measured whole."""
    if pid is None:
        return 0.0
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stats[int(entry.name)] = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # gone since the listing
                continue
    tree: set[int] = set()
    more = {pid}
    while more:
        tree |= more
        more = {p for p, f in stats.items() if int(f[1]) in tree} - tree
    ticks = sum(int(x) for p in tree & stats.keys() for x in stats[p][11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def summarize(samples: list[float], wall: float) -> dict[str, float]:
    ms = sorted(samples)
    return {"p50": statistics.median(ms), "p99": ms[min(len(ms) - 1, int(len(ms) * 0.99))],
            "rps": len(ms) / wall}


async def run_client(url: str, headers: dict[str, str], calls: int, make_call: Callable[[Client, int], Awaitable[Any]],
                     setup: Callable[[Client], Awaitable[Any]] | None = None) -> list[float]:
    out = []
    async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            await client.list_tools()
            ctx = await setup(client) if setup else None
            for i in range(calls):
                if setup and i and i % MAX_CALLS == 0:  # a task allows MAX_CALLS calls of a step: begin another
                    ctx = await setup(client)
                t = time.perf_counter()
                r = await make_call(client, i) if ctx is None else await make_call(client, ctx)  # type: ignore[arg-type]
                out.append((time.perf_counter() - t) * 1000)
                if r.is_error:
                    raise RuntimeError(f"call failed: {r.content}")
    return out


async def measure(url: str, headers: dict[str, str], tool: str, calls: int, clients: int, gated: bool,
                  pid: int | None = None) -> dict:
    async def setup(client: Client) -> str:
        r = await client.call_tool("intentgate__begin_task", {"intent": "bench-lookup",
                                                              "params": {"order_id": "ORD-7"}, "reason": "bench"})
        return r.structured_content["task"]

    async def call(client: Client, task: Any) -> Any:
        meta = {"intentgate/task": task, "intentgate/step": "lookup"} if gated else None
        return await client.call_tool(tool, {"order_id": "ORD-7"}, meta=meta)

    # warm up
    await run_client(url, headers, 20, call, setup if gated else None)
    cpu, t = cpu_seconds(pid), time.perf_counter()
    seq = await run_client(url, headers, calls, call, setup if gated else None)
    seq_stats = summarize(seq, time.perf_counter() - t)
    if pid is not None:
        seq_stats["cpu_ms"] = (cpu_seconds(pid) - cpu) * 1000 / len(seq)
    per = max(1, calls // clients)
    cpu, t = cpu_seconds(pid), time.perf_counter()
    conc = await asyncio.gather(*(run_client(url, headers, per, call, setup if gated else None) for _ in range(clients)))
    conc_stats = summarize([x for c in conc for x in c], time.perf_counter() - t)
    if pid is not None:
        conc_stats["cpu_ms"] = (cpu_seconds(pid) - cpu) * 1000 / (per * clients)
    return {"seq": seq_stats, "conc": conc_stats}


def start_upstream(procs: list[subprocess.Popen[bytes]]) -> str:
    """The one upstream every path calls (``tests/servers/tool_server.py``'s ``orders``); its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    procs.append(subprocess.Popen([sys.executable, str(ROOT / "tests/servers/tool_server.py"),
                                   "--name", "orders", "--http", str(port)]))
    wait_http(url, procs[-1], "upstream")
    return url


def start_intentgate(work: Path, upstream: str, procs: list[subprocess.Popen[bytes]],
                     lean: bool = True) -> tuple[str, dict[str, str], int]:
    """``intentgate serve`` on ``upstream`` with the bench intent, data under ``work``: URL, headers, pid."""
    intents = work / "intents"
    intents.mkdir(exist_ok=True)
    (intents / "bench.yaml").write_text(yaml.safe_dump(INTENT))
    data = work / ("lean" if lean else "sdk")
    data.mkdir()
    (data / "intentgate.yaml").write_text(yaml.safe_dump({
        "intents_dir": str(intents), "policy_dir": str(ROOT / "opa"), "data_dir": str(data),
        "upstreams": [{"name": "orders", "url": upstream, "lean": lean}],
        "front": {"rate_limit_per_second": None},  # one agent drives every client: measure gating only
    }))
    token = DevIssuer(KeySet.open_or_create(data / "keys" / "agent-issuer")).mint(AGENT)
    port = free_port()
    procs.append(subprocess.Popen([sys.executable, "-m", "intentgate", "serve", "--config",
                                   str(data / "intentgate.yaml"), "--port", str(port)], cwd=ROOT))
    wait_http(f"http://127.0.0.1:{port}/healthz", procs[-1], "intentgate")
    return f"http://127.0.0.1:{port}/mcp", {"Authorization": f"Bearer {token}"}, procs[-1].pid


def start_fastmcp_proxy(upstream: str, procs: list[subprocess.Popen[bytes]]) -> tuple[str, int] | None:
    """FastMCP's proxy on ``upstream``: URL and pid, or None where fastmcp is not installed."""
    try:
        import fastmcp  # noqa: F401
    except ImportError:
        return None
    port = free_port()
    procs.append(subprocess.Popen([sys.executable, "-c", FASTMCP_PROXY, upstream, str(port)]))
    wait_http(f"http://127.0.0.1:{port}/mcp", procs[-1], "fastmcp proxy")
    return f"http://127.0.0.1:{port}/mcp", procs[-1].pid


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def results_table(title: str, results: dict[str, dict], clients: int) -> Table:
    """One row per path: p50, p99, calls/s and CPU ms per call, sequential then ``clients`` at once."""
    table = Table(title=title)
    for col in ("path", "seq p50 ms", "seq p99 ms", "seq calls/s", "seq CPU ms/call", f"{clients}x p50 ms",
                f"{clients}x p99 ms", f"{clients}x calls/s", f"{clients}x CPU ms/call"):
        table.add_column(col, justify="right" if col != "path" else "left")
    for name, r in results.items():
        s, c = r["seq"], r["conc"]
        cpu = [f"{x['cpu_ms']:.2f}" if "cpu_ms" in x else "-" for x in (s, c)]
        table.add_row(name, f"{s['p50']:.2f}", f"{s['p99']:.2f}", f"{s['rps']:.0f}", cpu[0], f"{c['p50']:.2f}",
                      f"{c['p99']:.2f}", f"{c['rps']:.0f}", cpu[1])
    return table


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--lean-off", action="store_true",
                    help="also measure a gateway whose upstream has lean: false (the SDK's client for every request)")
    args = ap.parse_args()
    console = Console(width=120)
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="intentgate-e2e-") as tmp:
        try:
            upstream = start_upstream(procs)
            gateways = {"intentgate (gating every call)" + ("" if lean else ", lean: false"):
                        start_intentgate(Path(tmp), upstream, procs, lean)
                        for lean in ((True, False) if args.lean_off else (True,))}

            results: dict[str, dict] = {}
            console.print(f"direct: {args.calls} sequential calls, then {args.clients} clients ...")
            results["direct"] = await measure(upstream, {}, "get_order", args.calls, args.clients, gated=False)
            fm = start_fastmcp_proxy(upstream, procs)
            if fm:
                console.print("FastMCP proxy ...")
                results["fastmcp proxy (no gating)"] = await measure(
                    fm[0], {}, "get_order", args.calls, args.clients, gated=False)
            else:
                console.print("[yellow]fastmcp not installed (pip install -e '.[bench]'): skipping (b)[/yellow]")
            for label, (url, headers, pid) in gateways.items():
                console.print(f"{label} ...")
                results[label] = await measure(url, headers, "orders__get_order", args.calls, args.clients,
                                               gated=True, pid=pid)
        finally:
            stop_all(procs)

    console.print(results_table(
        f"tools/call over Streamable HTTP: {args.calls} sequential, {args.clients} concurrent clients",
        results, args.clients))
    gate = results["intentgate (gating every call)"]
    direct = results["direct"]
    console.print(f"IntentGate added p50 over direct: {gate['seq']['p50'] - direct['seq']['p50']:.2f} ms")
    fm = results.get("fastmcp proxy (no gating)")
    if fm:
        console.print(
            f"IntentGate / FastMCP: p50 ratio {gate['seq']['p50'] / fm['seq']['p50']:.2f} (target <= 1.0), "
            f"throughput ratio {gate['seq']['rps'] / fm['seq']['rps']:.2f} sequential, "
            f"{gate['conc']['rps'] / fm['conc']['rps']:.2f} concurrent (target >= 1.0)"
        )
    print(json.dumps({k: v for k, v in results.items()}, indent=None))


if __name__ == "__main__":
    asyncio.run(main())
