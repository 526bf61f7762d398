"""Workflow conformance against the project's real intents."""

from __future__ import annotations

from intentgate.workflow import HistoryEntry, Task, check_call

AGENT = "spiffe://example.org/agent/support-1"
NOW = 1_800_000_000.0


def task(history: list[tuple[str, str, dict]] | None = None, **over) -> Task:
    fields = dict(
        id="tsk_1",
        intent="refund-order",
        intent_version="3",
        agent=AGENT,
        params={"order_id": "ORD-7", "ticket_id": "TCK-1"},
        reason="customer asked for a refund",
        created_at=NOW - 10,
        expires_at=NOW + 900,
        history=[
            HistoryEntry(step=s, tool=t, decision="allow", decision_id=f"dec_{i}", at=NOW - 5, arguments=a)
            for i, (s, t, a) in enumerate(history or [])
        ],
    )
    fields.update(over)
    return Task(**fields)


READ = ("read_ticket", "tickets.get_ticket", {"ticket_id": "TCK-1"})
LOOKUP = ("lookup", "orders.get_order", {"order_id": "ORD-7"})


def check(registry, t: Task, step: str, tool: str, args: dict, agent: str = AGENT, now: float = NOW):
    return check_call(registry.get(t.intent), t, agent_id=agent, step=step, tool=tool, arguments=args, now=now)


def test_conformant_path(registry) -> None:
    t = task()
    r = check(registry, t, *READ)
    assert r.ok and r.violations == [] and r.allowed_next == ["read_ticket"]
    r = check(registry, task([READ]), *LOOKUP)
    assert r.ok and not r.terminal
    args = {"order_id": "ORD-7", "amount": 30, "currency": "EUR"}
    r = check(registry, task([READ, LOOKUP]), "refund", "payments.refund", args)
    assert r.ok, r.violations
    r = check(
        registry,
        task([READ, LOOKUP, ("refund", "payments.refund", args)]),
        "comment",
        "tickets.add_comment",
        {"ticket_id": "TCK-1", "body": "refunded 30 EUR"},
    )
    assert r.ok and r.terminal


def test_skipped_step_is_out_of_order(registry) -> None:
    r = check(registry, task([READ]), "refund", "payments.refund", {"order_id": "ORD-7", "amount": 1, "currency": "EUR"})
    assert not r.ok
    assert "step_out_of_order:refund" in r.violations
    # the refund binds to the lookup step's argument, which was never taken
    assert "binding_unresolved:order_id" in r.violations
    assert r.allowed_next == ["lookup"]


def test_first_call_must_be_a_start_step(registry) -> None:
    r = check(registry, task(), *LOOKUP)
    assert r.violations == ["step_out_of_order:lookup"]


def test_every_violation_is_reported(registry) -> None:
    r = check(
        registry,
        task([READ], agent="spiffe://example.org/agent/other", status="ended"),
        "lookup",
        "payments.refund",
        {"order_id": "ORD-8", "color": "red"},
    )
    assert set(r.violations) == {
        "task_not_owned",
        "task_ended:ended",
        "tool_mismatch:payments.refund",
        "argument_not_allowed:color",
        "binding_mismatch:order_id",
    }


def test_argument_constraints(registry) -> None:
    t = task([READ, LOOKUP])
    r = check(registry, t, "refund", "payments.refund", {"order_id": "ORD-7", "amount": 9000, "currency": "XXX"})
    assert set(r.violations) == {"argument_constraint:amount", "argument_constraint:currency"}
    r = check(registry, t, "refund", "payments.refund", {"order_id": "ORD-7"})
    assert set(r.violations) == {"argument_missing:amount", "argument_missing:currency"}
    # optional argument may be given and is then validated
    r = check(registry, t, "refund", "payments.refund", {"order_id": "ORD-7", "amount": 5, "currency": "EUR", "reason": ""})
    assert r.violations == ["argument_constraint:reason"]


def test_binding_is_strict_json_equality(registry) -> None:
    t = task([READ])
    assert check(registry, t, "lookup", "orders.get_order", {"order_id": "ORD-8"}).violations == [
        "binding_mismatch:order_id"
    ]
    triage = task(
        intent="triage-ticket",
        params={"ticket_id": "TCK-1", "customer_email": "ann@example.com"},
        history=None,
    )
    r = check(registry, triage, "read_ticket", "tickets.get_ticket", {"ticket_id": "TCK-1"})
    assert r.ok


def test_expired_task(registry) -> None:
    r = check(registry, task(), *READ, now=NOW + 901)
    assert r.violations == ["task_expired"]


def test_unknown_step(registry) -> None:
    r = check(registry, task(), "delete_everything", "orders.delete", {})
    assert r.violations == ["unknown_step:delete_everything"]
    assert r.allowed_next == ["read_ticket"]


def test_max_calls_on_self_loop(registry) -> None:
    params = {"ticket_id": "TCK-1", "customer_email": "ann@example.com"}
    read = ("read_ticket", "tickets.get_ticket", {"ticket_id": "TCK-1"})
    listing = ("list_orders", "orders.list_orders", {"customer_email": "ann@example.com"})
    history = [read]
    for _ in range(3):
        t = task(history, intent="triage-ticket", params=params)
        assert check(registry, t, *listing).ok
        history = [*history, listing]
    t = task(history, intent="triage-ticket", params=params)
    r = check(registry, t, *listing)
    assert r.violations == ["max_calls_exceeded:list_orders"]
    assert r.allowed_next == ["comment"]


def test_single_call_step_cannot_repeat(registry) -> None:
    r = check(registry, task([READ, LOOKUP]), *LOOKUP)
    assert r.violations == ["step_out_of_order:lookup"]
