"""Policy inputs recorded by the real pipeline, for comparing policy engines on them.

A gateway runtime (real SQLite store, embedded engine, this repository's intents and policy)
runs a seeded mix of workflows: task begins by the issuer and by the agent itself (refused where
the intent is issuer-begun), conformant ones, skipped and repeated steps, bound arguments
changed, amounts either side of the refund limits, credential rotations in and out of the
change window, calls on ended tasks.  The inputs are then read back from the decision log,
exactly as recorded, so engines are compared on what the gateway actually sends them.
"""

from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path
from typing import Any

from sqlalchemy import text

from intentgate.clock import FrozenClock
from intentgate.config import load_config
from intentgate.decide import CallRequest
from intentgate.errors import TaskError
from intentgate.identity import AgentIdentity
from intentgate.runtime import Runtime
from tests.conftest import INTENTS_DIR, POLICY_DIR
from tests.tasks import ISSUER

__all__ = ["record_policy_inputs"]

MONDAY_10 = 1_799_056_800.0  # 2027-01-04T10:00:00Z, inside the change window
SUPPORT = AgentIdentity(id="spiffe://example.org/agent/support-1")
OPS = AgentIdentity(id="spiffe://example.org/agent/ops-1")


def _call(agent: AgentIdentity, task: str, step: str, tool: str, args: dict[str, Any]) -> CallRequest:
    upstream, _, name = tool.partition(".")
    return CallRequest(agent=agent, task_id=task, step=step, upstream=upstream, tool=name, untrusted_arguments=args)


async def record_policy_inputs(tmp_path: Path, n: int = 1000, seed: int = 20261123) -> list[dict[str, Any]]:
    """At least ``n`` distinct-enough policy inputs, the first ``n`` of what the pipeline recorded."""
    rng = random.Random(seed)
    config = load_config(None, data_dir=tmp_path, intents_dir=INTENTS_DIR, policy_dir=POLICY_DIR,
                         front={"rate_limit_per_second": None})
    clock = FrozenClock(MONDAY_10)
    rt = await Runtime.open(config, clock=clock)
    try:
        d = rt.decider
        calls = 0
        while calls < n * 1.25:  # some calls end before the policy runs (ended task): a margin
            clock.advance(rng.choice([60.0, 3600.0, 5 * 3600.0, 86400.0]))  # weekdays, nights, weekends
            if rng.random() < 0.7:
                calls += await _refund(d, rng)
            else:
                calls += await _rotation(d, rng)

        def rows(conn: Any) -> list[Any]:
            return conn.execute(text("SELECT policy_input FROM decisions WHERE policy_input IS NOT NULL "
                                     "ORDER BY seq")).all()

        found = [json.loads(r[0]) if isinstance(r[0], str) else r[0] for r in rt.store.db.run_sync(rows)]
    finally:
        await rt.aclose()
    assert len(found) >= n, f"only {len(found)} policy inputs recorded"
    return found[:n]


async def _refund(d: Any, rng: random.Random) -> int:
    order = f"ORD-{rng.randint(1, 99)}"
    params = {"ticket_id": "TCK-1", "order_id": order}
    if rng.random() < 0.1:  # the agent tries to begin it itself, or begins the lookup it may begin
        with contextlib.suppress(TaskError):
            await d.begin_task(SUPPORT, rng.choice(["refund-order", "lookup-order", "triage-ticket"]),
                               params, "on my own")
    started = await d.begin_task(SUPPORT, "refund-order", params, "refund", issuer=ISSUER)
    task = started.task_id
    plan = [("read_ticket", "tickets.get_ticket", {"ticket_id": "TCK-1"}),
            ("lookup", "orders.get_order", {"order_id": order}),
            ("refund", "payments.refund", {"order_id": order, "currency": rng.choice(["EUR", "USD", "GBP"]),
                                           "amount": rng.choice([1, 5, 99.5, 899, 901, 1000, 1001, 1099, 1101,
                                                                 2500, 4999, 5000, 5001])}),
            ("comment", "tickets.add_comment", {"ticket_id": "TCK-1", "body": "refunded"})]
    calls = 0
    for step, tool, args in plan:
        roll = rng.random()
        if roll < 0.08:
            args = {**args, "order_id": "ORD-999999"} if "order_id" in args else {**args, "extra": True}
        elif roll < 0.12:
            continue  # skip the step: the next call is out of order
        await d.decide(_call(SUPPORT, task, step, tool, args))
        calls += 1
        if rng.random() < 0.05:
            await d.decide(_call(SUPPORT, task, step, tool, args))  # a repeat
            calls += 1
    if rng.random() < 0.1:
        with contextlib.suppress(TaskError):  # a task that ran its last step is completed already
            await d.end_task(SUPPORT, task)
        await d.decide(_call(SUPPORT, task, "comment", "tickets.add_comment", {"ticket_id": "TCK-1", "body": "x"}))
    return calls


async def _rotation(d: Any, rng: random.Random) -> int:
    service = rng.choice(["billing", "search", "auth"])
    started = await d.begin_task(OPS, "rotate-credential", {"service": service, "owner_email": "o@example.org"},
                                 "rotation", issuer=ISSUER)
    task = started.task_id
    await d.decide(_call(OPS, task, "describe", "secrets.describe_credential", {"service": service}))
    await d.decide(_call(OPS, task, "rotate", "secrets.rotate_credential",
                         {"service": service, "grace_period_seconds": rng.choice([0, 600, 86400])}))
    return 2
