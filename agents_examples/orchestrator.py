"""The support queue: a trusted orchestrator that begins tasks *for* the support agents.

It never reads a ticket's text (where a prompt injection would sit), only the queue's own
records: which ticket goes to which agent, and which order the ticket was filed against.
For each assignment it begins the task over the gateway's REST API with its own workload
identity (``POST /v1/tasks``; the gateway's config lists ``spiffe://example.org/orchestrator``
as a task issuer for ``refund-order``), and hands the agent nothing but the task id.  The
agent cannot change what the task is for: the intent and its parameters were fixed here.

    python -m agents_examples.orchestrator --url http://127.0.0.1:8080 --token ORCHESTRATOR_TOKEN \\
        --agent spiffe://example.org/agent/support-1 --ticket TCK-1001

(``intentgate agent-token --agent spiffe://example.org/orchestrator`` mints its token with the
development issuer.)  Over stdio, where no REST call is made, the host hands the agent a signed
task grant instead: ``intentgate task grant --agent ... --intent refund-order -p ticket_id=... ``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Sequence
from typing import Any

import httpx2

__all__ = ["ORCHESTRATOR", "QUEUE", "Orchestrator", "TaskRefused"]

ORCHESTRATOR = "spiffe://example.org/orchestrator"
# the support queue: each open refund ticket with the order it was filed against
QUEUE = {"TCK-1001": "ORD-5001", "TCK-1002": "ORD-5002", "TCK-1003": "ORD-5003", "TCK-1004": "ORD-5004"}


class TaskRefused(RuntimeError):
    """The gateway refused to begin the task (its reason code in ``code``)."""

    def __init__(self, code: str, message: str, decision_id: str | None) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.decision_id = code, decision_id


class Orchestrator:
    """Begins tasks for agents as the task issuer ``spiffe://example.org/orchestrator``."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url.removesuffix("/mcp").rstrip("/")
        self.token = token

    async def begin(self, agent: str, intent: str, params: dict[str, Any], reason: str,
                    ttl_seconds: int | None = None) -> dict[str, Any]:
        """Begin ``intent`` for ``agent``; the gateway's answer (``task``, ``expires_at``, ...)."""
        body: dict[str, Any] = {"agent": agent, "intent": intent, "params": params, "reason": reason}
        if ttl_seconds is not None:
            body["ttl_seconds"] = ttl_seconds
        async with httpx2.AsyncClient(base_url=self.base_url, timeout=30,
                                      headers={"Authorization": f"Bearer {self.token}"}) as http:
            r = await http.post("/v1/tasks", json=body)
        if r.status_code != 201:
            doc = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
            raise TaskRefused(str(doc.get("error", r.status_code)), str(doc.get("message", r.text[:200])),
                              doc.get("decision_id"))
        return dict(r.json())

    async def assign_refund(self, agent: str, ticket_id: str) -> str:
        """Begin ``refund-order`` for ``agent`` on ``ticket_id`` (the order from the queue); the task id."""
        started = await self.begin(agent, "refund-order", {"ticket_id": ticket_id, "order_id": QUEUE[ticket_id]},
                                   f"refund requested in {ticket_id} (support queue)")
        return str(started["task"])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m agents_examples.orchestrator", description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway's base URL")
    parser.add_argument("--token", default=os.environ.get("INTENTGATE_ORCHESTRATOR_TOKEN"),
                        help="the orchestrator's workload token (default: $INTENTGATE_ORCHESTRATOR_TOKEN)")
    parser.add_argument("--agent", required=True, help="the agent to assign the ticket to")
    parser.add_argument("--ticket", required=True, choices=sorted(QUEUE), help="the ticket to assign")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("--token (or $INTENTGATE_ORCHESTRATOR_TOKEN) is required")
    task = asyncio.run(Orchestrator(args.url, args.token).assign_refund(args.agent, args.ticket))
    print(json.dumps({"task": task, "agent": args.agent, "ticket": args.ticket}))


if __name__ == "__main__":
    main()
