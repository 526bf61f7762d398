"""A reviewer in the loop: a held large refund approved over the REST API, then break-glass.

**Held refund.**  The support agent works ticket TCK-1003: Carol returned a laptop and asks
for 1800.00 EUR back (``ORD-5003``).  The workflow allows the refund, but the policy holds
refunds above 1000 EUR for a reviewer (``policy_hold``, ``policy:large_refund``): the call
comes back ``hold`` with an approval id and nothing is refunded.  A reviewer, with an admin
token, finds it in ``GET /v1/approvals?status=pending`` and approves it
(``POST /v1/approvals/{id}/approve``); approving it a second time is a 409.  The agent sends
the identical call again and it goes through, recorded as ``approved:<approval id>`` (read
back from ``GET /v1/decisions``).  The approval covers exactly that call, once.

**Break-glass.**  An on-call agent (its own workload identity) must refund ``ORD-5004``
(75.00 USD, ticket TCK-1004) while, in this story, the orders service is down: it cannot do
the lookup the workflow requires, so its refund is denied (``step_out_of_order``).  An
operator opens a 15-minute break-glass grant for that agent and ``payments.refund``
(``POST /v1/grants``); the same refund is then allowed, recorded with ``break_glass:<grant
id>`` first in its reasons, and the grant shows up for review (``GET
/v1/grants?needs_review=true``) until a second person signs it off (``POST
/v1/grants/{id}/sign-off``).

Both tasks are begun for the agents by the support queue (``orchestrator``), as every task
that moves money is.

    python -m agents_examples.reviewer_scenario --url http://127.0.0.1:8080/mcp --token TOKEN \\
        --admin-token "$(intentgate admin-token)" --orchestrator-token TOKEN [--oncall-token TOKEN]
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from typing import Any

import httpx2
import jwt

from ._agent import Agent, Say, Transcript, agent_main, connect, parse_args
from .orchestrator import Orchestrator
from .support_agent import finish

__all__ = ["AGENT", "ONCALL_AGENT", "ReviewApiMissing", "Reviewer", "run"]

AGENT = "spiffe://example.org/agent/support-1"
ONCALL_AGENT = "spiffe://example.org/agent/support-oncall"
HELD = {"ticket_id": "TCK-1003", "order_id": "ORD-5003"}
BREAK_GLASS = {"ticket_id": "TCK-1004", "order_id": "ORD-5004"}


class ReviewApiMissing(RuntimeError):
    """The gateway answered 404/405 on a reviewer endpoint this scenario needs."""


class Reviewer:
    """The reviewer's side: the gateway's REST API under ``/v1`` with an admin token."""

    def __init__(self, http: httpx2.AsyncClient, transcript: Transcript, say: Say | None) -> None:
        self.http, self.transcript, self._say = http, transcript, say

    def say(self, line: str) -> None:
        if self._say is not None:
            self._say(line)

    async def request(self, method: str, path: str, action: str, **kw: Any) -> httpx2.Response:
        response = await self.http.request(method, path, **kw)
        if response.status_code in (404, 405) and "/decisions" not in path:
            raise ReviewApiMissing(f"{method} {path} answered {response.status_code}: this gateway has no such "
                                   "reviewer endpoint yet")
        body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        self.transcript.reviews.append({"action": action, "method": method, "path": path,
                                        "status": response.status_code, "body": body})
        self.say(f"[reviewer] {action}: {method} {path} → {response.status_code}")
        return response

    async def pending_approval(self, decision_id: str | None) -> dict[str, Any]:
        r = await self.request("GET", "/v1/approvals", "list pending approvals", params={"status": "pending"})
        r.raise_for_status()
        found = [a for a in r.json()["approvals"] if a["decision_id"] == decision_id]
        if not found:
            raise RuntimeError(f"no pending approval for decision {decision_id}")
        return found[0]

    async def reasons_of_last(self, task: str, tool: str) -> list[str]:
        """The reasons the gateway recorded on the task's newest decision for ``tool``."""
        r = await self.request("GET", "/v1/decisions", "read the decision back",
                               params={"q": task, "tool": tool, "limit": 1})
        r.raise_for_status()
        items = r.json()["items"]
        return list(items[0]["reasons"]) if items else []


async def held_refund(agent: Agent, reviewer: Reviewer, task: str) -> None:
    agent.take(task, f"refund-order for {HELD['ticket_id']}")
    await agent.call("read the ticket", "tickets__get_ticket", {"ticket_id": HELD["ticket_id"]},
                     task=task, step="read_ticket")
    order = await agent.call("look up the order", "orders__get_order", {"order_id": HELD["order_id"]},
                             task=task, step="lookup")
    refund = {"order_id": HELD["order_id"], "amount": float(order.result["total"]),
              "currency": str(order.result["currency"]), "reason": "laptop returned (RT-88213)"}
    held = await agent.call("refund 1800.00 EUR", "payments__refund", refund, task=task, step="refund")
    if held.outcome != "hold":
        agent.note(f"expected the refund to be held, got {held.outcome}")
        return
    agent.note(f"held for a reviewer (approval {held.approval_id}); nothing was refunded yet")

    approval = await reviewer.pending_approval(held.decision_id)
    r = await reviewer.request("POST", f"/v1/approvals/{approval['id']}/approve", "approve the refund",
                               json={"note": "return received at the warehouse, RT-88213"})
    r.raise_for_status()
    again = await reviewer.request("POST", f"/v1/approvals/{approval['id']}/approve", "approve it again",
                                   json={"note": "double click"})
    reviewer.say(f"    ↳ a decided approval cannot be decided again ({again.status_code})")

    retried = await agent.call("send the identical refund again", "payments__refund", refund,
                               task=task, step="refund")
    if retried.outcome == "allow":
        retried.reasons = await reviewer.reasons_of_last(task, "payments.refund")
        agent.note(f"allowed, recorded as {', '.join(retried.reasons)}")
        await agent.call("note the refund on the ticket", "tickets__add_comment",
                         {"ticket_id": HELD["ticket_id"], "body": "Refunded 1800.00 EUR after review."},
                         task=task, step="comment")
    await finish(agent, task)


async def break_glass(agent: Agent, reviewer: Reviewer, task: str) -> None:
    agent.take(task, f"refund-order for {BREAK_GLASS['ticket_id']}")
    await agent.call("read the ticket", "tickets__get_ticket", {"ticket_id": BREAK_GLASS["ticket_id"]},
                     task=task, step="read_ticket")
    agent.note("the orders service is down in this story: the lookup the workflow requires cannot happen")
    refund = {"order_id": BREAK_GLASS["order_id"], "amount": 75.0, "currency": "USD",
              "reason": "refund promised before the outage"}
    denied = await agent.call("refund without the lookup", "payments__refund", refund, task=task, step="refund")
    if denied.outcome != "deny":
        agent.note(f"expected a denial, got {denied.outcome}")
        return
    r = await reviewer.request("POST", "/v1/grants", "open a 15-minute break-glass grant", json={
        "agent": agent.agent_id, "tool": "payments.refund", "duration_seconds": 900,
        "reason": "orders service outage; refund promised to the customer today"})
    r.raise_for_status()
    grant = r.json()
    allowed = await agent.call("refund without the lookup, under the grant", "payments__refund", refund,
                               task=task, step="refund")
    if allowed.outcome == "allow":
        allowed.reasons = await reviewer.reasons_of_last(task, "payments.refund")
        agent.note(f"allowed, recorded as {', '.join(allowed.reasons)}")
        await agent.call("note the refund on the ticket", "tickets__add_comment",
                         {"ticket_id": BREAK_GLASS["ticket_id"], "body": "Refunded 75.00 USD under break-glass."},
                         task=task, step="comment")
    await finish(agent, task)
    r = await reviewer.request("GET", "/v1/grants", "list grants that need review", params={"needs_review": "true"})
    r.raise_for_status()
    r = await reviewer.request("POST", f"/v1/grants/{grant['id']}/sign-off", "sign the grant off",
                               json={"note": "checked the refund against the payment provider"})
    r.raise_for_status()


def _agent_id(token: str) -> str:
    """The ``sub`` of one's own workload token (read, not verified: the gateway verifies it)."""
    return str(jwt.decode(token, options={"verify_signature": False})["sub"])


async def run(url: str, token: str, *, admin_token: str, orchestrator: Orchestrator,
              oncall_token: str | None = None, say: Say | None = print, api: str | None = None,
              do_break_glass: bool = True) -> Transcript:
    """The held refund (agent ``token``), then break-glass (agent ``oncall_token``, default the
    same), each on a task the ``orchestrator`` begins for that agent."""
    base = api or url.removesuffix("/mcp")
    async with httpx2.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {admin_token}"},
                                  timeout=30) as http:
        missing: ReviewApiMissing | None = None
        held_task = await orchestrator.assign_refund(_agent_id(token), HELD["ticket_id"])
        async with connect(url, token) as client:
            agent = Agent(client, "support", say)
            reviewer = Reviewer(http, agent.transcript, say)
            try:
                await held_refund(agent, reviewer, held_task)
            except ReviewApiMissing as exc:  # raised once the session is closed, not inside its task group
                missing = exc
                await agent.end(agent.transcript.tasks[-1])
        if missing is not None:
            raise missing
        if do_break_glass:
            oncall = oncall_token or token
            task = await orchestrator.assign_refund(_agent_id(oncall), BREAK_GLASS["ticket_id"])
            async with connect(url, oncall) as client:
                other = Agent(client, "on-call", say, transcript=agent.transcript)  # one story, one transcript
                other.agent_id = _agent_id(oncall)
                await break_glass(other, Reviewer(http, agent.transcript, say), task)
        return agent.transcript


def main(argv: Sequence[str] | None = None) -> None:
    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--oncall-token", default=None,
                            help="workload token of the on-call agent for break-glass (default: --token)")
        parser.add_argument("--orchestrator-token", required=True,
                            help="workload token of the support queue, which begins the tasks "
                                 "(intentgate agent-token --agent spiffe://example.org/orchestrator)")

    args = parse_args("reviewer_scenario", "A held refund approved by a reviewer, then break-glass.", argv,
                      admin=True, extra=options)
    transcript = asyncio.run(run(args.url, args.token, admin_token=args.admin_token,
                                 orchestrator=Orchestrator(args.url, args.orchestrator_token),
                                 oncall_token=args.oncall_token))
    agent_main(transcript, args.json)


if __name__ == "__main__":
    main()
