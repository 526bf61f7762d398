"""Peers benchmark: the same tool call on the same upstream through each MCP gateway, in one run.

(a) direct to the upstream over Streamable HTTP; (b) FastMCP's proxy (fastmcp 4.1.2, gates nothing);
(c) IBM ContextForge (``mcp-contextforge-gateway`` 1.1.0, its defaults but for rate limiting,
    which is off as IntentGate's is: JWT auth, SQLite); (d) IntentGate gating every call.

Each way: N sequential calls from one client, then 8 concurrent clients.  Prints p50/p99, calls/s
and the CPU ms per call of the proxy's processes (utime+stime from /proc, workers and reaped
children included; steadier than wall time on a shared machine), the ratios to direct, and
IntentGate's lead over each peer (the goal: at least 5x ahead of FastMCP's proxy and ContextForge),
then one JSON line.  The upstream, the client loop and the IntentGate set-up are bench/e2e.py's.

ContextForge needs Python >= 3.12: ``--contextforge-python PATH``, else the first of python3.13 and
python3.12 on PATH (or under ~/.pyenv/versions) that runs.  It is pip-installed once into
~/.cache/intentgate/bench-contextforge; without such a Python it is skipped, with a line saying so.

Per-call cost at steps 1-10, 190-200 and 990-1000 of one long task through IntentGate:
``python bench/longtask.py``.
Usage: ``python bench/peers.py [--calls 1000] [--clients 8] [--contextforge-python PATH]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx2
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e import (  # noqa: E402
    free_port, measure, results_table, start_fastmcp_proxy, start_intentgate, start_upstream, stop_all, wait_http,
)

CF_VERSION = "1.1.0"
CF_VENV = Path.home() / ".cache" / "intentgate" / "bench-contextforge"
CF_ADMIN = "admin@example.com"
GOAL = 5.0  # IntentGate's lead over each peer the project aims for

DIRECT, FASTMCP, CONTEXTFORGE, INTENTGATE = (
    "direct", "fastmcp proxy (no gating)", "contextforge (no gating)", "intentgate (gating every call)")


def find_python(given: str | None) -> tuple[str | None, str]:
    """A Python >= 3.12 for ContextForge, or None and why not."""
    if given:
        candidates = [given]
    else:
        candidates = [p for p in map(shutil.which, ("python3.13", "python3.12")) if p]
        pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
        candidates += sorted((str(p) for p in pyenv.glob("3.1[2-9]*/bin/python3")), reverse=True)
    for python in candidates:
        try:  # a pyenv shim is on PATH but fails where its version is not selected: run it to know
            ok = subprocess.run([python, "-c", "import sys; sys.exit(sys.version_info < (3, 12))"],
                                capture_output=True, timeout=30).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return python, ""
    tried = ", ".join(candidates) or "no python3.13 or python3.12 on PATH"
    return None, f"needs Python >= 3.12 (tried: {tried}); pass --contextforge-python PATH"


def contextforge_bin(python: str, console: Console) -> Path:
    """The bin folder of a venv with ContextForge installed, made once (pip's progress shown)."""
    bindir = CF_VENV / "bin"
    probe = [str(bindir / "python"), "-c",
             "import importlib.metadata as m; print(m.version('mcp-contextforge-gateway'))"]
    installed = (bindir / "python").exists() and subprocess.run(probe, capture_output=True, text=True).stdout
    if installed and installed.strip() == CF_VERSION:
        return bindir
    console.print(f"installing mcp-contextforge-gateway=={CF_VERSION} into {CF_VENV} (once) ...")
    subprocess.run([python, "-m", "venv", str(CF_VENV)], check=True)
    subprocess.run([str(bindir / "python"), "-m", "pip", "install", "--disable-pip-version-check",
                    f"mcp-contextforge-gateway=={CF_VERSION}"], check=True)
    return bindir


def contextforge_env(work: Path) -> dict[str, str]:
    """ContextForge's settings (it reads them from the environment): fresh secrets, SQLite under ``work``."""
    def strong() -> str:
        return secrets.token_urlsafe(48)

    return {
        "PATH": os.environ.get("PATH", ""), "HOME": str(Path.home()),
        "JWT_SECRET_KEY": strong(), "AUTH_ENCRYPTION_SECRET": strong(),  # it refuses to start on weak ones
        "PLATFORM_ADMIN_EMAIL": CF_ADMIN, "PLATFORM_ADMIN_PASSWORD": strong(),
        "DEFAULT_USER_PASSWORD": strong(), "BASIC_AUTH_PASSWORD": strong(),
        "DATABASE_URL": f"sqlite:///{work / 'contextforge.db'}", "CACHE_TYPE": "memory",  # no Redis
        "RATE_LIMITING_ENABLED": "false",  # 100 MCP requests a minute by default; IntentGate's is off too
        "SSRF_ALLOW_LOCALHOST": "true",  # the upstream is on loopback
        "MCPGATEWAY_UI_ENABLED": "false", "MCPGATEWAY_ADMIN_API_ENABLED": "false", "LOG_LEVEL": "ERROR",
    }


def start_contextforge(bindir: Path, upstream: str, work: Path,
                       procs: list[subprocess.Popen[bytes]]) -> tuple[str, dict[str, str], int, str]:
    """ContextForge on loopback with ``upstream`` registered through its REST API: URL, headers, pid, tool."""
    work.mkdir()
    env = contextforge_env(work)
    port = free_port()
    with open(work / "contextforge.log", "wb") as log:  # cwd is ``work``: no stray .env is read
        procs.append(subprocess.Popen([str(bindir / "mcpgateway"), "--host", "127.0.0.1", "--port", str(port)],
                                      cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT))
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/health", procs[-1], f"contextforge (log: {work / 'contextforge.log'})", timeout=180)
    token = subprocess.run(
        [str(bindir / "python"), "-m", "mcpgateway.utils.create_jwt_token", "--username", CF_ADMIN, "--admin",
         "--exp", "240", "--secret", env["JWT_SECRET_KEY"]],
        cwd=work, env=env, capture_output=True, text=True, check=True).stdout.split()[0]
    headers = {"Authorization": f"Bearer {token}"}
    gw = httpx2.post(f"{base}/gateways", headers=headers, timeout=60,
                     json={"name": "orders", "url": upstream, "transport": "STREAMABLEHTTP"})
    gw.raise_for_status()
    tools = httpx2.get(f"{base}/tools", headers=headers, timeout=60).json()
    tool = next(t["name"] for t in tools if t["gatewayId"] == gw.json()["id"] and t["originalName"] == "get_order")
    return f"{base}/mcp", headers, procs[-1].pid, tool


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def ratios_table(results: dict[str, dict], clients: int) -> tuple[Table, dict[str, dict[str, float]]]:
    """Each path against direct: p50 (higher is slower) and calls/s (lower is slower)."""
    direct = results[DIRECT]
    table = Table(title="each path against direct")
    for col in ("path", "seq p50", "seq calls/s", f"{clients}x p50", f"{clients}x calls/s"):
        table.add_column(col, justify="right" if col != "path" else "left")
    out = {}
    for name, r in results.items():
        if name == DIRECT:
            continue
        out[name] = {f"{ph}_{k}": r[ph][k] / direct[ph][k] for ph in ("seq", "conc") for k in ("p50", "rps")}
        table.add_row(name, *(ratio(r[ph][k], direct[ph][k]) for ph in ("seq", "conc") for k in ("p50", "rps")))
    return table, out


def lead_table(results: dict[str, dict], clients: int) -> tuple[Table, dict[str, dict[str, float]]]:
    """IntentGate's lead over each peer: peer p50 / ours, our calls/s / theirs, their CPU per call / ours."""
    gate = results[INTENTGATE]
    table = Table(title=f"IntentGate's lead over each peer (goal: >= {GOAL:.0f}x)")
    cols = ("seq p50", "seq calls/s", "seq CPU/call", f"{clients}x p50", f"{clients}x calls/s", f"{clients}x CPU/call")
    for col in ("peer", *cols):
        table.add_column(col, justify="right" if col != "peer" else "left")
    out = {}
    for peer in (FASTMCP, CONTEXTFORGE):
        if peer not in results:
            continue
        p, lead = results[peer], {}
        for ph in ("seq", "conc"):
            lead[f"{ph}_p50"] = p[ph]["p50"] / gate[ph]["p50"]
            lead[f"{ph}_rps"] = gate[ph]["rps"] / p[ph]["rps"]
            if "cpu_ms" in p[ph] and gate[ph].get("cpu_ms"):
                lead[f"{ph}_cpu"] = p[ph]["cpu_ms"] / gate[ph]["cpu_ms"]
        out[peer] = lead
        cells = [lead.get(f"{ph}_{k}") for ph in ("seq", "conc") for k in ("p50", "rps", "cpu")]
        table.add_row(peer, *("-" if x is None else f"[{'green' if x >= GOAL else 'red'}]{x:.2f}x[/]" for x in cells))
    return table, out


async def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Per-call cost at steps 1-10, 190-200 and 990-1000 of one long task: python bench/longtask.py")
    ap.add_argument("--calls", type=int, default=1000,
                    help="sequential calls per path, and the calls the clients share")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients in the second phase")
    ap.add_argument("--contextforge-python", metavar="PATH",
                    help="a Python >= 3.12 to install ContextForge with (default: python3.13, python3.12 on PATH)")
    args = ap.parse_args()
    console = Console(width=130)
    skipped: dict[str, str] = {}
    python, why = find_python(args.contextforge_python)
    bindir = contextforge_bin(python, console) if python else None
    if not python:
        skipped[CONTEXTFORGE] = why
        console.print(f"[yellow]ContextForge skipped: {why}[/yellow]")

    procs: list[subprocess.Popen[bytes]] = []
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="intentgate-peers-") as tmp:
        work = Path(tmp)
        try:
            upstream = start_upstream(procs)
            gate_url, gate_headers, gate_pid = start_intentgate(work, upstream, procs)
            console.print(f"direct: {args.calls} sequential calls, then {args.clients} clients ...")
            results[DIRECT] = await measure(upstream, {}, "get_order", args.calls, args.clients, gated=False)
            fm = start_fastmcp_proxy(upstream, procs)
            if fm:
                console.print("FastMCP proxy ...")
                results[FASTMCP] = await measure(fm[0], {}, "get_order", args.calls, args.clients, gated=False,
                                                 pid=fm[1])
                stop_all(procs[-1:])  # idle peers would take CPU from the phases after theirs
            else:
                skipped[FASTMCP] = "fastmcp not installed (pip install -e '.[bench]')"
                console.print(f"[yellow]FastMCP proxy skipped: {skipped[FASTMCP]}[/yellow]")
            if bindir:
                console.print("ContextForge: starting, registering the upstream ...")
                cf_url, cf_headers, cf_pid, cf_tool = start_contextforge(bindir, upstream, work / "contextforge", procs)
                console.print("ContextForge ...")
                results[CONTEXTFORGE] = await measure(cf_url, cf_headers, cf_tool, args.calls, args.clients,
                                                      gated=False, pid=cf_pid)
                stop_all(procs[-1:])
            console.print("IntentGate ...")
            results[INTENTGATE] = await measure(gate_url, gate_headers, "orders__get_order", args.calls, args.clients,
                                                gated=True, pid=gate_pid)
        finally:
            stop_all(procs)

    title = (f"tools/call over Streamable HTTP, one upstream: {args.calls} sequential, {args.clients} concurrent "
             "clients; CPU = the proxy's processes")
    console.print(results_table(title, results, args.clients))
    to_direct, direct_ratios = ratios_table(results, args.clients)
    console.print(to_direct)
    lead, leads = lead_table(results, args.clients)
    console.print(lead)
    for name, why in skipped.items():
        console.print(f"[yellow]not measured: {name}: {why}[/yellow]")
    console.print("long tasks (steps 1-10, 190-200, 990-1000 of one task): python bench/longtask.py")
    print(json.dumps({"calls": args.calls, "clients": args.clients, "results": results,
                      "ratio_to_direct": direct_ratios, "intentgate_lead": leads, "skipped": skipped}))


if __name__ == "__main__":
    asyncio.run(main())
