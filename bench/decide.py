"""Decision-core benchmark: latency of ``decide`` (allow and deny, durable write included).

Prints, side by side in one run:
- p50/p99 of ``Decider.decide`` for allowed and for denied calls, on SQLite (WAL), with
  10 and with 10,000 intents loaded (ratio printed: the target is ≤ 1.2×), on each policy
  engine: the embedded one and a real OPA server over its REST API on loopback;
- each engine's policy evaluation alone, the token mint alone, and a raw SQLite
  insert+commit, as baselines for what the pipeline adds;
- ``begin_task`` by a task issuer (its checks, the Rego policy on ``task/begin``, the
  durable write), and an allowed call on a budgeted step (the refund) with its budget and,
  call for call beside it, the same step of a twin intent without a budget: what the budget
  check costs;
- an allowed call bound to an earlier step's result (triage-ticket's comment, its ticket id
  read from what read_ticket returned, kept with that call's outcome) and, call for call
  beside it, the same step of a twin intent bound to the task parameter: what result bindings
  cost;
- the argument schemas applied by jsonschema-rs (what the gateway uses: ECMA-262 patterns) and
  by the pure-Python ``jsonschema``, on the same values.

The OPA server is ``--opa-url``, or one started here from ``--opa-bin`` (default
``$INTENTGATE_OPA_BIN`` or ``opa`` on the PATH; ``bash .ci/opa.sh`` builds it); without
either, the OPA rows are left out, saying so.

Usage: ``python bench/decide.py [--calls 2000] [--intents 10,10000] [--engines embedded,opa]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import sqlite3
import subprocess
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from intentgate.config import load_config  # noqa: E402
from intentgate.bindings import keep_values  # noqa: E402
from intentgate.decide import CallRequest  # noqa: E402
from intentgate.identity import AgentIdentity  # noqa: E402
from intentgate.runtime import Runtime  # noqa: E402
from intentgate.schemas import compile_schema  # noqa: E402
from intentgate.store import KeptValues  # noqa: E402
from intentgate.tasks import TaskIssuer  # noqa: E402

AGENT = AgentIdentity(id="spiffe://example.org/agent/support-1")
PARAMS = {"ticket_id": "TCK-1", "order_id": "ORD-7"}


ISSUER = TaskIssuer("orchestrator", "spiffe://example.org/orchestrator", "rest")  # tasks are begun for agents

def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    ms = sorted(s / 1e6 for s in samples_ns)
    p50 = statistics.median(ms)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return p50, p99


def write_intents(directory: Path, count: int) -> None:
    """The project's intents, refund-order's twin without its budget (``refund-order-unbudgeted``:
    what the budget check costs, measured call for call beside it), triage-ticket's twin bound
    to its parameters instead of read_ticket's result (``triage-ticket-params``), and
    synthetic copies of refund-order, ``count`` in all."""
    directory.mkdir(parents=True)
    base = yaml.safe_load((ROOT / "intents" / "refund-order.yaml").read_text())
    shipped = sorted(p for p in (ROOT / "intents").glob("*.yaml") if not p.name.endswith(".test.yaml"))
    for src in shipped:
        (directory / src.name).write_text(src.read_text())
    twin = {k: v for k, v in base.items() if k != "budgets"}
    (directory / "refund-order-unbudgeted.yaml").write_text(
        yaml.safe_dump(dict(twin, name="refund-order-unbudgeted"), sort_keys=False))
    triage = yaml.safe_load((ROOT / "intents" / "triage-ticket.yaml").read_text())
    triage["name"] = "triage-ticket-params"
    triage["steps"]["comment"]["arguments"]["ticket_id"] = {"bind": "params.ticket_id"}
    triage["steps"]["notify"]["arguments"]["to"] = {"bind": "params.customer_email"}
    (directory / "triage-ticket-params.yaml").write_text(yaml.safe_dump(triage, sort_keys=False))
    for i in range(count - len(shipped) - 2):
        doc = dict(base, name=f"refund-order-{i:05d}", agents=[f"spiffe://example.org/agent/team{i}-*"])
        (directory / f"refund-order-{i:05d}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


async def measure(n_intents: int, calls: int, work: Path, engine: str, opa_url: str | None) -> dict[str, object]:
    intents_dir = work / f"intents-{n_intents}"
    if not intents_dir.exists():
        write_intents(intents_dir, n_intents)
    t0 = time.perf_counter()
    policy = {"engine": "opa", "url": opa_url, "timeout_seconds": 10} if engine == "opa" else {}
    config = load_config(None, data_dir=work / f"var-{engine}-{n_intents}", intents_dir=intents_dir,
                         policy_dir=ROOT / "opa", policy=policy,
                         front={"rate_limit_per_second": None})  # the pipeline, not the limiter
    rt = await Runtime.open(config)
    load_s = time.perf_counter() - t0
    try:
        d = rt.decider
        # warm up
        for _ in range(50):
            t = await d.begin_task(AGENT, "refund-order", PARAMS, "bench", issuer=ISSUER)
            await d.decide(CallRequest(agent=AGENT, task_id=t.task_id, step="read_ticket", upstream="tickets",
                                       tool="get_ticket", untrusted_arguments={"ticket_id": "TCK-1"}))
        allow: list[int] = []
        begin: list[int] = []
        tasks = []
        for _ in range(calls):  # a task issuer begins each task: checks, the policy, a durable write
            s = time.perf_counter_ns()
            tasks.append((await d.begin_task(AGENT, "refund-order", PARAMS, "bench", issuer=ISSUER)).task_id)
            begin.append(time.perf_counter_ns() - s)
        for task_id in tasks:
            req = CallRequest(agent=AGENT, task_id=task_id, step="read_ticket", upstream="tickets",
                              tool="get_ticket", untrusted_arguments={"ticket_id": "TCK-1"})
            s = time.perf_counter_ns()
            v = await d.decide(req)
            allow.append(time.perf_counter_ns() - s)
            assert v.outcome == "allow", v
        # the refund step: with the budget, the window's sum is read and the spend written in the
        # decision's own transaction (0.5 EUR a refund: 2,000 of them stay within the 2,000 EUR);
        # call for call beside it, the same step of the twin intent without a budget
        refund: list[int] = []
        unbudgeted: list[int] = []
        twins = [(await d.begin_task(AGENT, "refund-order-unbudgeted", PARAMS, "bench", issuer=ISSUER)).task_id
                 for _ in range(calls)]
        for task_id, twin in zip(tasks, twins, strict=True):
            for t, samples in ((task_id, refund), (twin, unbudgeted)):
                for step, upstream, tool, args in (("read_ticket", "tickets", "get_ticket", {"ticket_id": "TCK-1"}),
                                                   ("lookup", "orders", "get_order", {"order_id": "ORD-7"})):
                    if t == twin or step == "lookup":  # the budgeted tasks took read_ticket above
                        await d.decide(CallRequest(agent=AGENT, task_id=t, step=step, upstream=upstream, tool=tool,
                                                   untrusted_arguments=args))
                req = CallRequest(agent=AGENT, task_id=t, step="refund", upstream="payments", tool="refund",
                                  untrusted_arguments={"order_id": "ORD-7", "amount": 0.5, "currency": "EUR"})
                s = time.perf_counter_ns()
                v = await d.decide(req)
                samples.append(time.perf_counter_ns() - s)
                assert v.outcome == "allow", v
        # a result binding: comment's ticket id must be what read_ticket returned, kept with that
        # call's outcome (as the MCP front keeps it); beside it the twin bound to the parameter
        bound: list[int] = []
        by_param: list[int] = []
        triage = {"ticket_id": "TCK-1001", "customer_email": "alice.martin@example.com"}
        for _ in range(calls):
            for name, samples in (("triage-ticket", bound), ("triage-ticket-params", by_param)):
                t = (await d.begin_task(AGENT, name, triage, "bench", issuer=ISSUER)).task_id
                v = await d.decide(CallRequest(agent=AGENT, task_id=t, step="read_ticket", upstream="tickets",
                                               tool="get_ticket", untrusted_arguments={"ticket_id": "TCK-1001"}))
                kept = None
                if v.keep:
                    values, dropped = keep_values(triage, v.keep)
                    kept = KeptValues(t, "read_ticket", values, dropped)
                await rt.store.record_outcome(v.decision_id, at=time.time(), status="ok", latency_ms=1.0, kept=kept)
                req = CallRequest(agent=AGENT, task_id=t, step="comment", upstream="tickets", tool="add_comment",
                                  untrusted_arguments={"ticket_id": "TCK-1001", "body": "triaged"})
                s = time.perf_counter_ns()
                v = await d.decide(req)
                samples.append(time.perf_counter_ns() - s)
                assert v.outcome == "allow", v
        deny: list[int] = []
        req = CallRequest(agent=AGENT, task_id=tasks[0], step="refund", upstream="payments", tool="refund",
                          untrusted_arguments={"order_id": "ORD-7", "amount": 5, "currency": "EUR"})
        for _ in range(calls):
            s = time.perf_counter_ns()
            v = await d.decide(req)
            deny.append(time.perf_counter_ns() - s)
            assert v.outcome == "deny", v
        # policy alone, on a recorded input
        stored = await rt.store.get_decision(v.decision_id)
        pinput = stored.policy_input
        pol: list[int] = []
        for _ in range(calls):
            s = time.perf_counter_ns()
            await rt.policy.evaluate(pinput)
            pol.append(time.perf_counter_ns() - s)
        mint: list[int] = []
        for _ in range(calls):
            s = time.perf_counter_ns()
            rt.issuer.mint(agent=AGENT.id, task_id="tsk_x", intent="refund-order", step="lookup", upstream="orders",
                           tool="orders.get_order", arguments_sha256="0" * 64, task_expires_at=time.time() + 600)
            mint.append(time.perf_counter_ns() - s)
        return {"load_s": load_s, "allow": allow, "deny": deny, "policy": pol, "mint": mint, "begin": begin,
                "refund": refund, "unbudgeted": unbudgeted, "bound": bound, "by_param": by_param}
    finally:
        await rt.aclose()


def start_opa(binary: str, work: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([binary, "run", "--server", "--addr", f"127.0.0.1:{port}", "--log-level", "error",
                             "--disable-telemetry"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"OPA ({binary}) did not start")


def schema_engines(calls: int) -> dict[str, list[int]]:
    """refund's argument schemas on one call's values: jsonschema-rs (the gateway's) and the
    pure-Python jsonschema, each validator compiled once."""
    import jsonschema

    refund = yaml.safe_load((ROOT / "intents" / "refund-order.yaml").read_text())["steps"]["refund"]["arguments"]
    schemas = {k: {x: y for x, y in v.items() if x not in ("bind", "path", "mode", "optional")}
               for k, v in refund.items()}
    schemas["ticket"] = {"type": "string", "pattern": "^TCK-[0-9]{1,12}$"}
    values = {"order_id": "ORD-7", "amount": 30, "currency": "EUR", "reason": "broken", "ticket": "TCK-1001"}
    ours = {k: compile_schema(v) for k, v in schemas.items()}
    pure = {k: jsonschema.Draft202012Validator(v) for k, v in schemas.items()}
    out: dict[str, list[int]] = {"rs": [], "py": []}
    for _ in range(calls):
        s = time.perf_counter_ns()
        assert not any(ours[k].errors(values[k]) for k in schemas)
        out["rs"].append(time.perf_counter_ns() - s)
        s = time.perf_counter_ns()
        assert not any(list(pure[k].iter_errors(values[k])) for k in schemas)
        out["py"].append(time.perf_counter_ns() - s)
    return out


def raw_sqlite(calls: int, work: Path) -> list[int]:
    conn = sqlite3.connect(work / "raw.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    out = []
    for i in range(calls):
        s = time.perf_counter_ns()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (v) VALUES (?)", (f"row {i}",))
        conn.execute("COMMIT")
        out.append(time.perf_counter_ns() - s)
    conn.close()
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--intents", default="10,10000", help="comma-separated intent counts")
    ap.add_argument("--engines", default="embedded,opa", help="comma-separated: embedded, opa")
    ap.add_argument("--opa-url", help="an OPA server to use (default: start one from --opa-bin)")
    ap.add_argument("--opa-bin", default=os.environ.get("INTENTGATE_OPA_BIN") or shutil.which("opa"),
                    help="the OPA binary to start (default: $INTENTGATE_OPA_BIN or opa on the PATH)")
    args = ap.parse_args()
    counts = [int(x) for x in args.intents.split(",")]
    engines = [e for e in args.engines.split(",") if e]
    console = Console(width=140)
    opa_proc = None
    with tempfile.TemporaryDirectory(prefix="intentgate-bench-") as tmp:
        work = Path(tmp)
        opa_url = args.opa_url
        if "opa" in engines and not opa_url:
            if args.opa_bin:
                opa_proc, opa_url = start_opa(args.opa_bin, work)
            else:
                console.print("[yellow]no OPA binary (--opa-bin, $INTENTGATE_OPA_BIN, or `bash .ci/opa.sh`): "
                              "the OPA-server rows are left out[/yellow]")
                engines.remove("opa")
        results = {}
        try:
            for n in counts:
                for engine in engines:
                    console.print(f"measuring {engine} with {n} intents ({args.calls} calls each)...")
                    results[engine, n] = await measure(n, args.calls, work, engine, opa_url)
        finally:
            if opa_proc is not None:
                opa_proc.terminate()
                opa_proc.wait()
        raw = raw_sqlite(args.calls, work)
        engines_of_schemas = schema_engines(args.calls)

    names = {"embedded": "embedded Rego", "opa": "OPA server, REST on loopback"}
    table = Table(title=f"decide() latency, SQLite WAL, {args.calls} calls each (ms)")
    table.add_column("what")
    for n in counts:
        table.add_column(f"{n} intents p50", justify="right")
        table.add_column(f"{n} intents p99", justify="right")
    rows: list[tuple[str, str, str]] = []
    for engine in engines:
        rows += [(engine, "allow", f"decide: allow (token minted, durable write), {names[engine]}"),
                 (engine, "deny", f"decide: deny (durable write), {names[engine]}"),
                 (engine, "refund", f"decide: allow on a budgeted step (budget read + spent), {names[engine]}"),
                 (engine, "begin", f"begin_task by an issuer (checks, policy, durable write), {names[engine]}")]
    rows += [(engine, "policy", f"policy evaluation alone, {names[engine]}") for engine in engines]
    rows.append((engines[0], "mint", "token mint alone (EdDSA)"))
    for engine, key, label in rows:
        row = [label]
        for n in counts:
            p50, p99 = percentiles(results[engine, n][key])  # type: ignore[arg-type]
            row += [f"{p50:.3f}", f"{p99:.3f}"]
        table.add_row(*row)
    p50, p99 = percentiles(raw)
    table.add_row("baseline: raw sqlite3 insert+commit", *([f"{p50:.3f}", f"{p99:.3f}"] * len(counts)))
    console.print(table)
    first = results[engines[0], counts[0]]
    with_budget, without = percentiles(first["refund"]), percentiles(first["unbudgeted"])  # type: ignore[arg-type]
    budget = Table(title=f"the budget check, {names[engines[0]]}, {counts[0]} intents, call for call (ms)")
    for column in ("refund step", "p50", "p99"):
        budget.add_column(column, justify="right" if column != "refund step" else "left")
    budget.add_row("refund-order with its budget (sum over 24 h read, spend written)", f"{with_budget[0]:.3f}",
                   f"{with_budget[1]:.3f}")
    budget.add_row("its twin without a budget, the calls interleaved", f"{without[0]:.3f}", f"{without[1]:.3f}")
    budget.add_row("difference", f"{with_budget[0] - without[0]:+.3f}", f"{with_budget[1] - without[1]:+.3f}")
    console.print(budget)
    with_result, with_param = percentiles(first["bound"]), percentiles(first["by_param"])  # type: ignore[arg-type]
    binding = Table(title=f"a result binding, {names[engines[0]]}, {counts[0]} intents, call for call (ms)")
    for column in ("comment step", "p50", "p99"):
        binding.add_column(column, justify="right" if column != "comment step" else "left")
    binding.add_row("triage-ticket: ticket_id bound to read_ticket's result (kept values read)",
                    f"{with_result[0]:.3f}", f"{with_result[1]:.3f}")
    binding.add_row("its twin bound to params.ticket_id, the calls interleaved", f"{with_param[0]:.3f}",
                    f"{with_param[1]:.3f}")
    binding.add_row("difference", f"{with_result[0] - with_param[0]:+.3f}", f"{with_result[1] - with_param[1]:+.3f}")
    console.print(binding)
    rs, py = percentiles(engines_of_schemas["rs"]), percentiles(engines_of_schemas["py"])
    schemas = Table(title=f"refund's argument schemas on one call's values, {args.calls} times (ms)")
    for column in ("validator", "p50", "p99"):
        schemas.add_column(column, justify="right" if column != "validator" else "left")
    schemas.add_row("jsonschema-rs (the gateway's: ECMA-262 patterns)", f"{rs[0]:.4f}", f"{rs[1]:.4f}")
    schemas.add_row("jsonschema, pure Python (Python re patterns)", f"{py[0]:.4f}", f"{py[1]:.4f}")
    console.print(schemas)
    for n in counts:
        for engine in engines:
            console.print(f"startup with {n} intents, {names[engine]} (load + compile): "
                          f"{results[engine, n]['load_s']:.2f} s")
    if len(counts) >= 2:
        lo, hi = counts[0], counts[-1]
        for engine in engines:
            for key in ("allow", "deny"):
                r = percentiles(results[engine, hi][key])[0] / percentiles(results[engine, lo][key])[0]  # type: ignore[arg-type]
                console.print(f"{names[engine]}: {key} p50 ratio {hi} vs {lo} intents: {r:.2f}x (target <= 1.2x)")


if __name__ == "__main__":
    asyncio.run(main())
