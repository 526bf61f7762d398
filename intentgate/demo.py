"""``intentgate demo``: the whole story in one command.

It writes a config (the example ``intents/`` and ``opa/``, SQLite, embedded Rego, the
development issuer, the five example tool servers of ``agents_examples/servers`` as stdio
upstreams, the support queue as the task issuer of the support intents), starts
``intentgate serve`` on a free port of 127.0.0.1, has the support queue begin each agent's
task and runs the example agents of ``agents_examples/`` against it over Streamable HTTP
(the hijacked one also tries to begin tasks of its own), and prints what the gateway decided,
read back from its own database, and whether the audit chain verifies.  Then it keeps the
gateway running for the reviewer UI and API until Ctrl-C (unless ``--no-serve``).

The gateway runs as a subprocess, exactly as ``intentgate serve`` runs it for a user: the
agents are real remote MCP clients, nothing shares an event loop with the server, its
startup log drives the progress display, and Ctrl-C stops one process cleanly.  The examples
(intents, policy, tool servers, agents) are those of the source checkout, or the copies the
installed package carries (``intentgate.project.examples``).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx2
import yaml
from rich.columns import Columns
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from .config import GatewayConfig, load_config
from .errors import ConfigError
from .identity import DevIssuer
from .keys import KeySet
from .project import ORCHESTRATOR, SERVERS, TASK_ISSUERS, Examples, examples

__all__ = [
    "AGENTS",
    "REPO_ROOT",
    "ORCHESTRATOR",
    "SERVERS",
    "TASK_ISSUERS",
    "DemoGateway",
    "DemoSummary",
    "free_port",
    "read_summary",
    "run_agents",
    "run_demo",
    "start_gateway",
    "write_config",
]

REPO_ROOT = Path(__file__).resolve().parent.parent  # of a source checkout

# the workload identities the example agents run as (the intents allow spiffe://example.org/agent/support-*)
AGENTS = {
    "support": "spiffe://example.org/agent/support-1",
    "llm": "spiffe://example.org/agent/support-llm",
    "oncall": "spiffe://example.org/agent/support-oncall",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(data_dir: Path, *, root: Path | None = None) -> Path:
    """Write ``<data_dir>/intentgate.yaml`` and create the keys; the config's path.

    The examples are those of ``root`` (a source checkout), by default the shipped ones
    (:func:`intentgate.project.examples`).  Payments reads the gateway's public keys from a JWKS
    file written here (the gateway's ``/.well-known/jwks.json`` serves the same document); a
    file also works when the config is used with ``intentgate stdio`` and no HTTP gateway runs.
    """
    source = examples() if root is None else Examples(root, "agents_examples", installed=False)
    if not source.servers_dir.is_dir():
        raise ConfigError(f"{source.root}: the demo needs a source checkout or an installed intentgate "
                          "(agents_examples/ is missing)")
    cwd = source.server_cwd()
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    config_path = data_dir / "intentgate.yaml"
    config = load_config(None, data_dir=data_dir)  # only for the key directories' layout
    action_keys = KeySet.open_or_create(config.action_keys_dir)
    KeySet.open_or_create(config.agent_issuer_keys_dir)
    KeySet.open_or_create(config.admin_keys_dir)
    jwks = data_dir / "jwks.json"
    jwks.write_text(json.dumps(action_keys.jwks(), indent=2))
    servers_dir = data_dir / "servers"
    upstreams = [
        {"name": name, "command": sys.executable,
         "args": ["-m", source.server_module(name), "--data-dir", str(servers_dir)],
         **({"cwd": str(cwd)} if cwd is not None else {}), "timeout_seconds": 30,
         **({"env": {"INTENTGATE_JWKS": str(jwks)}} if name == "payments" else {})}
        for name in SERVERS
    ]
    document = {
        "intents_dir": str(source.intents_dir),
        "policy_dir": str(source.policy_dir),
        "data_dir": str(data_dir),
        # the demo runs at any hour: prod's change window (rotations on weekdays 8-18) would make it flaky
        "environment": "demo",
        "policy": {"engine": "embedded"},
        "identity": {"dev_issuer": True},
        # what moves money, credentials or mail is begun by a task issuer, never by an agent
        "tasks": {"begin": ["issuer"], "issuers": TASK_ISSUERS},
        # POST /v1/tokens/redeem only for tool servers with a workload token listed in redeem.callers;
        # none of the demo's redeems (the front burns what it forwards, payments keeps its own ledger)
        "redeem": {"require_caller": True, "callers": []},
        "upstreams": upstreams,
    }
    config_path.write_text("# written by `intentgate demo`\n" + yaml.safe_dump(document, sort_keys=False))
    return config_path


@dataclass
class DemoGateway:
    """A running ``intentgate serve`` subprocess and what a client needs to talk to it."""

    config_path: Path
    config: GatewayConfig
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    upstreams: dict[str, int] = field(default_factory=dict)  # name -> tools, as the log reported them

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mcp_url(self) -> str:
        return f"{self.base_url}/mcp"

    def agent_token(self, agent: str, ttl_seconds: int = 3600) -> str:
        return DevIssuer(KeySet.open_or_create(self.config.agent_issuer_keys_dir)).mint(agent, ttl_seconds)

    def admin_token(self, reviewer: str = "demo-reviewer", ttl_seconds: int = 8 * 3600) -> str:
        from .review import AdminTokenIssuer

        return AdminTokenIssuer(KeySet.open_or_create(self.config.admin_keys_dir)).mint(reviewer, ttl_seconds)

    def stop(self, timeout: float = 15) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _upstream_started(line: str) -> tuple[str, int] | None:
    """``(name, tools)`` from the gateway's "upstream X started with N tools" log line."""
    try:
        msg = str(json.loads(line).get("msg", ""))
    except ValueError:
        return None
    words = msg.split()
    if len(words) == 6 and words[0] == "upstream" and words[2] == "started" and words[5] == "tools":
        return words[1], int(words[4])
    return None


@contextmanager
def start_gateway(
    config_path: Path, *, port: int | None = None, timeout: float = 90,
    progress: Callable[[str, int | None], None] | None = None,
) -> Iterator[DemoGateway]:
    """Run ``intentgate serve --config CONFIG`` until the block ends; ready when ``/healthz`` is ok.

    ``progress(name, tools)`` is called as each upstream reports it started, then
    ``progress("gateway", None)`` when the gateway answers.
    """
    config = load_config(config_path)
    port = port or free_port()
    log_path = config.data_dir / "gateway.log"
    log: IO[bytes] = open(log_path, "wb")  # noqa: SIM115 - closed below
    env = {**os.environ, "INTENTGATE_LOG_LEVEL": "INFO"}
    cwd = config.data_dir if examples().installed else REPO_ROOT  # a checkout's gateway imports from its root
    process = subprocess.Popen(
        [sys.executable, "-m", "intentgate", "serve", "--config", str(config_path), "--port", str(port)],
        cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, env=env,
        start_new_session=True,  # Ctrl-C reaches the demo only, which then stops the gateway in order
    )
    gateway = DemoGateway(config_path, config, port, process, log_path)
    try:
        _wait_until_ready(gateway, timeout, progress)
        yield gateway
    finally:
        gateway.stop()
        log.close()


def _wait_until_ready(gw: DemoGateway, timeout: float,
                      progress: Callable[[str, int | None], None] | None) -> None:
    deadline = time.monotonic() + timeout
    seen = 0
    with httpx2.Client(timeout=2) as http:
        while True:
            lines = gw.log_path.read_text(errors="replace").splitlines()
            for line in lines[seen:]:
                started = _upstream_started(line)
                if started and started[0] not in gw.upstreams:
                    gw.upstreams[started[0]] = started[1]
                    if progress:
                        progress(*started)
            seen = len(lines)
            try:
                if http.get(f"{gw.base_url}/healthz").status_code == 200:
                    if progress:
                        progress("gateway", None)
                    return
            except httpx2.HTTPError:
                pass
            if gw.process.poll() is not None or time.monotonic() > deadline:
                tail = gw.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the gateway did not start (see {gw.log_path}):\n{tail}")
            time.sleep(0.1)


# ----- the summary, read from the gateway's database ------------------------------------------


@dataclass
class DemoSummary:
    calls: int
    by_outcome: dict[str, int]
    # reason code (policy:<reason> whole) -> tool-call decisions refused or held with it; and
    # "approved (allowed)" / "break_glass (allowed)": allows by a reviewer's approval or a grant
    by_reason: dict[str, int]
    tokens: dict[str, int]  # minted, consumed, revoked, unused
    tasks: dict[str, int]  # task status -> count
    begins: dict[str, int]  # "begun by <issuer>" / "refused: <reason code>" -> task begins
    chain_ok: bool
    chain_checked: int
    chain_problems: list[str]


def read_summary(config: GatewayConfig) -> DemoSummary:
    """Figures for the summary, straight from the store; and the audit chain verified."""
    from sqlalchemy import func, select

    from .store import Store
    from .store.tables import DecisionRow, TaskRow, TokenRow

    store = Store.open(config.database_url, timeout=config.store.timeout_seconds)
    try:
        def figures(conn: Any) -> tuple[dict[str, int], ...]:
            calls = DecisionRow.__table__.c  # type: ignore[attr-defined]
            by_outcome = dict(conn.execute(
                select(calls.outcome, func.count()).where(calls.kind == "tools/call").group_by(calls.outcome)).all())
            by_reason: dict[str, int] = {}
            for outcome, reasons in conn.execute(
                    select(calls.outcome, calls.reasons).where(calls.kind == "tools/call")):
                if outcome == "allow":  # an allow by exception says so first: approved:<id>, break_glass:<id>
                    code = reasons[0].split(":", 1)[0] if reasons else ""
                    if code in ("approved", "break_glass"):
                        by_reason[f"{code} (allowed)"] = by_reason.get(f"{code} (allowed)", 0) + 1
                    continue
                # a code once per decision; the policy's own reasons stay whole (policy:large_refund)
                for code in {r if r.startswith("policy:") else r.split(":", 1)[0] for r in reasons}:
                    by_reason[code] = by_reason.get(code, 0) + 1
            tok = TokenRow.__table__.c  # type: ignore[attr-defined]
            tokens = dict(conn.execute(select(tok.status, func.count()).group_by(tok.status)).all())
            task = TaskRow.__table__.c  # type: ignore[attr-defined]
            tasks = dict(conn.execute(select(task.status, func.count()).group_by(task.status)).all())
            begins: dict[str, int] = {}
            for issuer, n in conn.execute(select(task.issuer, func.count()).group_by(task.issuer)).all():
                key = f"tasks begun by {str(issuer).split(':', 1)[0]}" if issuer else "tasks begun by the agent itself"
                begins[key] = begins.get(key, 0) + n
            for (reasons,) in conn.execute(select(calls.reasons).where(calls.kind == "task/begin",
                                                                      calls.outcome == "deny")):
                key = f"task begins refused: {reasons[0].split(':', 1)[0] if reasons else '-'}"
                begins[key] = begins.get(key, 0) + 1
            return by_outcome, by_reason, tokens, tasks, begins

        by_outcome, by_reason, tokens, tasks, begins = store.db.run_sync(figures)
        chain = store.verify_chain()
    finally:
        store.close()
    return DemoSummary(
        calls=sum(by_outcome.values()), by_outcome=by_outcome, by_reason=dict(sorted(by_reason.items())),
        tokens={"minted": sum(tokens.values()), "consumed": tokens.get("consumed", 0),
                "revoked": tokens.get("revoked", 0), "unused": tokens.get("issued", 0)},
        tasks=tasks, begins=dict(sorted(begins.items())), chain_ok=chain.ok, chain_checked=chain.checked, chain_problems=chain.problems,
    )


# ----- the story ------------------------------------------------------------------------------


async def run_agents(gw: DemoGateway, say: Callable[[str], None], heading: Callable[[str], None]) -> list[Any]:
    """Run the example agents in order against the gateway; their transcripts."""
    package = examples().package
    support_agent, hijacked_agent, llm_style_agent, reviewer_scenario, orchestrator = (
        importlib.import_module(f"{package}.{name}")
        for name in ("support_agent", "hijacked_agent", "llm_style_agent", "reviewer_scenario", "orchestrator"))
    Orchestrator = orchestrator.Orchestrator  # noqa: N806 - the class, under its own name

    runs: list[Any] = []
    support = gw.agent_token(AGENTS["support"])
    queue = Orchestrator(gw.base_url, gw.agent_token(ORCHESTRATOR))

    async def assign(agent: str, ticket: str) -> str:
        task = await queue.assign_refund(agent, ticket)
        say(f"[support queue] began refund-order for {agent} on {ticket}: task {task}")
        return task

    heading("1. The support queue assigns TCK-1001; the agent refunds it by the book")
    runs.append(await support_agent.run(gw.mcp_url, support, task=await assign(AGENTS["support"], "TCK-1001"),
                                        say=say))
    heading("2. The same agent on TCK-1002, whose text carries a prompt injection")
    runs.append(await hijacked_agent.run(gw.mcp_url, support, task=await assign(AGENTS["support"], "TCK-1002"),
                                         say=say))
    heading("3. An LLM-style agent (no _meta: task and step as arguments) triages TCK-1001")
    triage = await queue.begin(AGENTS["llm"], "triage-ticket", llm_style_agent.PARAMS, "triage TCK-1001")
    say(f"[support queue] began triage-ticket for {AGENTS['llm']} on TCK-1001: task {triage['task']}")
    runs.append(await llm_style_agent.run(gw.mcp_url, gw.agent_token(AGENTS["llm"]), task=triage["task"], say=say))
    heading("4. A large refund held for a reviewer, approved over REST; then break-glass")
    runs.append(await reviewer_scenario.run(
        gw.mcp_url, support, admin_token=gw.admin_token(), orchestrator=queue,
        oncall_token=gw.agent_token(AGENTS["oncall"]), say=say))
    return runs


# ----- presenting it --------------------------------------------------------------------------

_COLOURS = {"allow": "green", "deny": "red", "hold": "yellow", "would_deny": "yellow"}


def print_story(transcripts: list[Any], console: Console) -> None:
    """One row per tool call the agents made: what they tried, and the gateway's verdict."""
    table = Table(title="What the agents tried", title_justify="left", expand=False)
    for column in ("agent", "what it tried", "verdict", "reasons"):
        table.add_column(column, overflow="fold")
    for transcript in transcripts:
        for call in transcript.calls:
            colour = _COLOURS.get(call.outcome, "white")
            verdict = f"[{colour}]{call.outcome}[/{colour}]" + (" [dim](tool failed)[/dim]" if call.tool_error else "")
            table.add_row(call.agent or transcript.agent, escape(f"{call.label} ({call.tool})"), verdict,
                          escape("\n".join(call.reasons)) or "-")
        table.add_section()
    console.print(table)


def print_summary(summary: DemoSummary, console: Console) -> None:
    """The gateway's own figures (read from its database) and the audit chain check."""
    figures = Table(title="What the gateway decided (from its database)", title_justify="left", show_header=False)
    figures.add_column("figure")
    figures.add_column("value", justify="right")
    by = summary.by_outcome
    figures.add_row("tool calls decided", str(summary.calls))
    figures.add_row("[green]allowed[/green]", str(by.get("allow", 0)))
    figures.add_row("[red]denied[/red]", str(by.get("deny", 0)))
    figures.add_row("[yellow]held for a reviewer[/yellow]", str(by.get("hold", 0)))
    figures.add_section()
    for name in ("minted", "consumed", "revoked", "unused"):
        figures.add_row(f"action tokens {name}", str(summary.tokens[name]))
    figures.add_section()
    for status, count in sorted(summary.tasks.items()):
        figures.add_row(f"tasks {status}", str(count))
    figures.add_section()
    for what, count in summary.begins.items():
        colour = "red" if "refused" in what else "green"
        figures.add_row(f"[{colour}]{what}[/{colour}]", str(count))
    reasons = Table(title="Denied or held by reason code; allowed by exception", title_justify="left")
    reasons.add_column("reason code")
    reasons.add_column("calls", justify="right")
    for code, count in summary.by_reason.items():
        reasons.add_row(code, str(count))
    console.print(Columns([figures, reasons], padding=(0, 4)))
    if summary.chain_ok:
        console.print(f"audit log: {summary.chain_checked} decisions, Merkle tree and checkpoints [green]verified[/green]")
    else:
        console.print(f"audit log: [red]BROKEN[/red]: {escape('; '.join(summary.chain_problems))}")


@contextmanager
def _start_with_progress(config_path: Path, console: Console, port: int | None = None) -> Iterator[DemoGateway]:
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("starting the gateway and its tool servers", total=len(SERVERS) + 1)

        def started(name: str, tools: int | None) -> None:
            what = "gateway listening" if tools is None else f"{name} tool server up ({tools} tools)"
            progress.update(task, advance=1, description=what)

        with start_gateway(config_path, port=port, progress=started) as gw:
            progress.update(task, completed=len(SERVERS) + 1, description=f"gateway at {gw.base_url}")
            progress.stop()
            yield gw


def _stop_on_sigterm() -> None:
    """SIGTERM stops the demo like Ctrl-C: the gateway and its tool servers are stopped, in order
    (they run in a session of their own, so the signal does not reach them by itself)."""
    if threading.current_thread() is threading.main_thread():
        def interrupt(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, interrupt)


def run_demo(data_dir: Path | None, *, serve: bool, console: Console, port: int | None = None) -> bool:
    """The whole demo; True when the audit chain verifies (a scenario that failed raises)."""
    _stop_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="intentgate-demo-") as tmp:
        directory = data_dir or Path(tmp)
        config_path = write_config(directory)
        console.print(f"config: {config_path}", highlight=False)
        with _start_with_progress(config_path, console, port) as gw:

            def say(line: str) -> None:
                console.print(line, markup=False, highlight=False, soft_wrap=True)

            def heading(text: str) -> None:
                console.rule(f"[bold]{escape(text)}", align="left")

            transcripts = asyncio.run(run_agents(gw, say, heading))
            console.rule()
            print_story(transcripts, console)
            summary = read_summary(gw.config)
            print_summary(summary, console)
            if serve:
                _serve_until_interrupted(gw, console, keep=data_dir is not None)
        return summary.chain_ok


def _serve_until_interrupted(gw: DemoGateway, console: Console, *, keep: bool) -> None:
    console.print()
    console.print(f"gateway (MCP, Streamable HTTP): [bold]{gw.mcp_url}[/bold]")
    console.print(f"reviewer UI:                     [bold]{gw.base_url}/ui[/bold]")
    console.print(f"reviewer API:                    {gw.base_url}/v1/decisions")
    console.print(f"API docs (OpenAPI):              {gw.base_url}/docs")
    console.print(f"admin token (8 h):               {gw.admin_token()}", soft_wrap=True, highlight=False)
    console.print(f"an agent token:                  intentgate agent-token -c {gw.config_path} "
                  f"--agent {AGENTS['support']}", soft_wrap=True, highlight=False)
    console.print(f"gateway log:                     {gw.log_path}", highlight=False)
    if not keep:
        console.print("[dim]the data directory is temporary: use --data-dir to keep it[/dim]")
    console.print("serving until Ctrl-C …")
    try:
        gw.process.wait()
        console.print(f"[red]the gateway exited ({gw.process.returncode}); see {gw.log_path}[/red]")
    except KeyboardInterrupt:
        console.print("stopping the gateway and its tool servers")
