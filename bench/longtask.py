"""Long-task benchmark: does a task's thousandth step cost what its tenth did?

One task of a long-running intent (a start step, then a lookup step that may follow itself 1,000
times, its argument bound to an earlier step's argument) takes ``--steps`` allowed calls through
``Decider.decide`` (embedded Rego, SQLite in WAL, the durable write included).  Printed side by
side in one run, per window of steps (1-10, 190-200, 990-1000): ``decide`` p50 and p99, the
process CPU per call (``time.process_time``, steadier than wall time on a shared machine), the
size of the policy input the decision row records, and the ratio of the last window to the
first (the goal: ≤ 1.2×).  ``--tasks`` such tasks are run one after another and their samples
pooled.

Usage: ``python bench/longtask.py [--steps 1000] [--tasks 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
from intentgate.decide import CallRequest  # noqa: E402
from intentgate.identity import AgentIdentity  # noqa: E402
from intentgate.runtime import Runtime  # noqa: E402
from intentgate.tasks import TaskIssuer  # noqa: E402

AGENT = AgentIdentity(id="spiffe://example.org/agent/support-1")
ISSUER = TaskIssuer("orchestrator", "spiffe://example.org/orchestrator", "rest")
WINDOWS = [(1, 10), (190, 200), (990, 1000)]

LONG_INTENT = {
    "name": "long-research",
    "version": "1",
    "description": "Read one ticket, then look orders up as often as needed (a long task).",
    "agents": ["spiffe://example.org/agent/support-*"],
    "params": {"ticket_id": {"type": "string", "pattern": "^TCK-[0-9]{1,12}$"}},
    "ttl_seconds": 86400,
    "mode": "enforce",
    "begin": ["issuer"],
    "start": ["read_ticket"],
    "steps": {
        "read_ticket": {"tool": "tickets.get_ticket", "arguments": {"ticket_id": {"bind": "params.ticket_id"}},
                        "next": ["lookup"]},
        "lookup": {"tool": "tickets.get_ticket", "max_calls": 1000, "next": ["lookup", "close"],
                   "arguments": {"ticket_id": {"bind": "steps.read_ticket.arguments.ticket_id"}}},
        "close": {"tool": "tickets.close_ticket", "arguments": {"ticket_id": {"bind": "params.ticket_id"}}},
    },
}


def window_of(step: int, windows: list[tuple[int, int]]) -> tuple[int, int] | None:
    return next((w for w in windows if w[0] <= step <= w[1]), None)


async def run(steps: int, tasks: int, work: Path) -> tuple[dict[tuple[int, int], dict[str, list[float]]], list]:
    intents = work / "intents"
    intents.mkdir()
    (intents / "long-research.yaml").write_text(yaml.safe_dump(LONG_INTENT, sort_keys=False))
    config = load_config(None, data_dir=work / "var", intents_dir=intents, policy_dir=ROOT / "opa",
                         front={"rate_limit_per_second": None})
    rt = await Runtime.open(config)
    windows = [w for w in WINDOWS if w[1] <= steps] or [(1, min(10, steps))]
    samples: dict[tuple[int, int], dict[str, list[float]]] = {w: {"wall": [], "cpu": [], "input": []} for w in windows}
    try:
        d = rt.decider
        for _ in range(tasks):
            begun = await d.begin_task(AGENT, "long-research", {"ticket_id": "TCK-1"}, "bench", issuer=ISSUER)
            for n in range(1, steps + 1):
                step = "read_ticket" if n == 1 else "lookup"
                req = CallRequest(agent=AGENT, task_id=begun.task_id, step=step, upstream="tickets",
                                  tool="get_ticket", untrusted_arguments={"ticket_id": "TCK-1"})
                c0, w0 = time.process_time(), time.perf_counter()
                v = await d.decide(req)
                w1, c1 = time.perf_counter(), time.process_time()
                assert v.outcome == "allow", (n, v)
                if (w := window_of(n, windows)) is not None:
                    samples[w]["wall"].append((w1 - w0) * 1000)
                    samples[w]["cpu"].append((c1 - c0) * 1000)
                    row = await rt.store.get_decision(v.decision_id)
                    samples[w]["input"].append(len(json.dumps(row.policy_input)))
    finally:
        await rt.aclose()
    return samples, windows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1000, help="allowed calls per task (≤ 1001)")
    ap.add_argument("--tasks", type=int, default=3, help="tasks run one after another, samples pooled")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        samples, windows = asyncio.run(run(args.steps, args.tasks, Path(tmp)))
    table = Table(title=f"one task, {args.steps} allowed calls ({args.tasks} tasks pooled; embedded Rego, SQLite)")
    for col in ("steps", "decide p50 ms", "decide p99 ms", "CPU ms/call", "policy input bytes"):
        table.add_column(col, justify="right")
    first = None
    for w in windows:
        s = samples[w]
        wall = sorted(s["wall"])
        p50, p99 = statistics.median(wall), wall[min(len(wall) - 1, int(len(wall) * 0.99))]
        cpu = statistics.mean(s["cpu"])
        first = first or (p50, cpu)
        table.add_row(f"{w[0]}-{w[1]}", f"{p50:.2f}", f"{p99:.2f}", f"{cpu:.2f}", f"{statistics.mean(s['input']):.0f}")
    last = samples[windows[-1]]
    table.add_row("last / first", f"{statistics.median(last['wall']) / first[0]:.2f}x", "",
                  f"{statistics.mean(last['cpu']) / first[1]:.2f}x", "")
    Console().print(table)


if __name__ == "__main__":
    main()
