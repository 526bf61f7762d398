package intentgate_tasks_test

import rego.v1

# Full data.intentgate references: see decision_test.rego.

intents := {
	"refund-order": {"agents": ["spiffe://example.org/agent/support-*"], "begin": ["issuer"]},
	"lookup-order": {"agents": ["spiffe://example.org/agent/support-*"], "begin": ["agent"]},
	"triage-ticket": {"agents": ["spiffe://example.org/agent/support-*"], "begin": ["issuer", "agent"]},
}

orchestrator := {"name": "orchestrator", "id": "spiffe://example.org/orchestrator", "via": "rest"}

begin(intent, issuer) := {
	"action": "task/begin",
	"agent": {"id": "spiffe://example.org/agent/support-1", "claims": {}},
	"issuer": issuer,
	"intent": {"name": intent, "version": "1"},
	"params": {"order_id": "ORD-7"},
	"reason": "customer asked",
	"task": {"ttl_seconds": 900},
	"context": {"now_ms": 1799056800000, "environment": "prod", "mode": "enforce"},
	"usage": {"open_tasks": {"refund-order": 2}, "budgets": {}},
}

cases := {
	"issuer begins an issuer intent": {"intent": "refund-order", "issuer": orchestrator, "reasons": []},
	"agent begins an issuer intent": {"intent": "refund-order", "issuer": null, "reasons": ["task_issuer_required"]},
	"agent begins an agent intent": {"intent": "lookup-order", "issuer": null, "reasons": []},
	"issuer begins an agent-only intent": {"intent": "lookup-order", "issuer": orchestrator, "reasons": ["issuer_not_permitted"]},
	"either begins a shared intent (issuer)": {"intent": "triage-ticket", "issuer": orchestrator, "reasons": []},
	"either begins a shared intent (agent)": {"intent": "triage-ticket", "issuer": null, "reasons": []},
	"unknown intent": {"intent": "exfiltrate", "issuer": orchestrator, "reasons": ["unknown_intent"]},
}

test_who_may_begin[note] if {
	some note, tc in cases
	d := data.intentgate.decision with input as begin(tc.intent, tc.issuer) with data.intentgate.intents as intents
	d.reasons == tc.reasons
	d.allow == (tc.reasons == [])
	d.hold == false
}

test_a_missing_issuer_is_the_agent if {
	d := data.intentgate.decision with input as object.remove(begin("refund-order", null), ["issuer"])
		with data.intentgate.intents as intents
	d.reasons == ["task_issuer_required"]
}

test_an_issuer_that_is_not_an_object_is_the_agent if {
	d := data.intentgate.decision with input as object.union(begin("refund-order", null), {"issuer": "orchestrator"})
		with data.intentgate.intents as intents
	d.reasons == ["task_issuer_required"]
}

test_an_intent_without_begin_cannot_be_begun if {
	d := data.intentgate.decision with input as begin("refund-order", orchestrator)
		with data.intentgate.intents as {"refund-order": {"agents": ["spiffe://example.org/agent/support-*"]}}
	d.allow == false
	d.reasons == ["issuer_not_permitted"]
}

test_open_task_limit if {
	under := data.intentgate.decision with input as begin("refund-order", orchestrator)
		with data.intentgate.intents as intents
		with data.intentgate.limits.open_tasks as {"refund-order": 3}
	under.allow == true
	at := data.intentgate.decision with input as object.union(begin("refund-order", orchestrator), {"usage": {"open_tasks": {"refund-order": 3}}})
		with data.intentgate.intents as intents
		with data.intentgate.limits.open_tasks as {"refund-order": 3}
	at.reasons == ["too_many_open_tasks"]
}

test_the_agent_must_be_one_the_intent_names if {
	d := data.intentgate.decision with input as object.union(begin("refund-order", orchestrator), {"agent": {"id": "spiffe://example.org/agent/ops-1"}})
		with data.intentgate.intents as intents
	d.reasons == ["agent_not_permitted"]
}
