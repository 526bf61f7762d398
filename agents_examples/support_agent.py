"""A well-behaved support agent: it takes ticket TCK-1001 and refunds the order it is about.

The support queue (``orchestrator``) assigns it the ticket: it begins the ``refund-order``
task for this agent with the ticket and the order the ticket was filed against as parameters
(the gateway binds every later call to them) and hands over the task id.  The agent checks the
ticket names that order, and follows the workflow: read the ticket, look the order up, refund
42.50 EUR, comment on the ticket.  The comment is the workflow's last step, so it completes
the task; the agent still ends it (``intentgate__end_task``), which is what any agent should
do when it is done or gives up: the gateway revokes every token of the task not yet used.

Run against a gateway (``intentgate demo`` prints the URL and a token; or mint one with
``intentgate agent-token --agent spiffe://example.org/agent/support-1``), with the task the
orchestrator began, or over stdio with a task grant from the host::

    python -m agents_examples.support_agent --url http://127.0.0.1:8080/mcp --token TOKEN --task TASK
    python -m agents_examples.support_agent --stdio var/intentgate.yaml --token TOKEN \
        --grant "$(intentgate task grant -c var/intentgate.yaml --agent spiffe://example.org/agent/support-1 \
                   --intent refund-order -p ticket_id=TCK-1001 -p order_id=ORD-5001 --reason 'refund requested')"
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from pathlib import Path

from ._agent import Agent, Say, Transcript, agent_main, connect, parse_args
from .orchestrator import QUEUE

__all__ = ["AGENT", "QUEUE", "TICKET", "run", "work_ticket"]

AGENT = "spiffe://example.org/agent/support-1"
TICKET = "TCK-1001"


def amount_asked(text: str) -> float | None:
    """The refund amount a ticket asks for ("refund the full 42.50 EUR" -> 42.5)."""
    found = re.search(r"(\d+(?:\.\d{1,2})?)\s*EUR", text)
    return float(found.group(1)) if found else None


async def work_ticket(agent: Agent, task: str, ticket_id: str, order_id: str) -> str:
    """The refund workflow of ``task`` for one ticket, every call in ``_meta`` form; the task id."""
    ticket = await agent.call("read the ticket", "tickets__get_ticket", {"ticket_id": ticket_id},
                              task=task, step="read_ticket")
    if ticket.outcome != "allow" or ticket.result.get("order_id") != order_id:
        agent.note(f"{ticket_id} is not about {order_id}: giving the task up")
        return task
    order = await agent.call("look up the order", "orders__get_order", {"order_id": order_id},
                             task=task, step="lookup")
    refund = amount_asked(str(ticket.result.get("body", ""))) or float(order.result["total"])
    currency = str(order.result["currency"])
    refunded = await agent.call(
        f"refund {refund:.2f} {currency}", "payments__refund",
        {"order_id": order_id, "amount": refund, "currency": currency, "reason": f"{ticket_id}: {ticket.result['subject']}"},
        task=task, step="refund",
    )
    if refunded.outcome == "allow" and not refunded.tool_error:
        body = f"Refunded {refund:.2f} {currency} of {order_id} ({refunded.result.get('refund_id')})."
        await agent.call("note the refund on the ticket", "tickets__add_comment",
                         {"ticket_id": ticket_id, "body": body}, task=task, step="comment")
    return task


async def finish(agent: Agent, task: str) -> None:
    """End the task; a task its last step already completed needs nothing more."""
    ended = await agent.end(task)
    if ended["is_error"] and ended.get("reasons") == ["task_ended"]:
        agent.note("the comment was the workflow's last step: the task was already complete")


async def run(url: str | None, token: str, *, task: str | None = None, grant: str | None = None,
              stdio_config: Path | None = None, say: Say | None = print, ticket_id: str = TICKET) -> Transcript:
    """Work the ticket through the gateway at ``url`` (or over stdio), on the ``task`` a task
    issuer began for it or the one a task ``grant`` begins; the transcript."""
    if (task is None) == (grant is None):
        raise ValueError("give the task a task issuer began, or a task grant")
    async with connect(url, token, stdio_config=stdio_config) as client:
        agent = Agent(client, "support", say)
        task = agent.take(task, f"refund-order for {ticket_id}") if task else await agent.begin_with_grant(grant or "")
        await work_ticket(agent, task, ticket_id, QUEUE[ticket_id])
        await finish(agent, task)
        return agent.transcript


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args("support_agent", "A support agent that refunds the order of ticket TCK-1001.", argv,
                      stdio=True, task=True)
    transcript = asyncio.run(run(args.url, args.token, task=args.task, grant=args.grant, stdio_config=args.stdio))
    agent_main(transcript, args.json)


if __name__ == "__main__":
    main()
