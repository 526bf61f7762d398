"""Prometheus metrics: what the store committed, counted exactly (real pipeline, real store)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from gateway.runtime import Runtime
from tests.test_approvals import BIG, clock, policy_dir, rt  # noqa: F401 - shared fixtures
from tests.test_decide import SUPPORT, begin_refund, call


def samples(rt: Runtime) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(rt.metrics.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_decisions_tokens_and_latency_are_counted(rt: Runtime) -> None:
    task = await begin_refund(rt)
    read = await rt.decider.decide(call(task, "read_ticket", "tickets.get_ticket", {"ticket_id": "TCK-1"}))
    await rt.verifier.verify_and_consume(read.token.token, tool="tickets.get_ticket", arguments={"ticket_id": "TCK-1"},
                                         audience="tickets", ledger=rt.store)
    await rt.decider.decide(call(task, "lookup", "orders.get_order", {"order_id": "ORD-7"}))  # token left unused
    await rt.decider.decide(call(task, "comment", "tickets.add_comment", {"ticket_id": "TCK-1", "body": "x"}))
    await rt.decider.decide(call(task, "refund", "payments.refund", BIG))  # held
    await rt.decider.end_task(SUPPORT, task)  # revokes the unused lookup token

    found = samples(rt)
    assert value(found, "intentgate_decisions_total", kind="tools/call", outcome="allow", intent="refund-order") == 2
    assert value(found, "intentgate_decisions_total", kind="tools/call", outcome="deny", intent="refund-order") == 1
    assert value(found, "intentgate_decisions_total", kind="tools/call", outcome="hold", intent="refund-order") == 1
    assert value(found, "intentgate_decisions_total", kind="task/begin", outcome="allow", intent="refund-order") == 1
    assert value(found, "intentgate_decisions_total", kind="task/end", outcome="allow", intent="refund-order") == 1
    assert value(found, "intentgate_decision_reasons_total", outcome="deny", reason="step_out_of_order") == 1
    assert value(found, "intentgate_decision_reasons_total", outcome="hold", reason="policy_hold") == 1
    assert value(found, "intentgate_decision_reasons_total", outcome="hold", reason="policy") == 1  # policy:large_refund
    assert value(found, "intentgate_tokens_total", event="minted") == 2
    assert value(found, "intentgate_tokens_total", event="consumed") == 1
    assert value(found, "intentgate_tokens_total", event="revoked") == 1
    assert value(found, "intentgate_decision_seconds_count", outcome="allow") == 2
    assert value(found, "intentgate_decision_seconds_count", outcome="deny") == 1
    assert value(found, "intentgate_decision_seconds_bucket", outcome="allow", le="+Inf") == 2
