package intentgate_test

import rego.v1

# Full data.intentgate references rather than `import data.intentgate`: regorus 0.13's
# interpreter (which runs these tests) evaluates rules reached through such an import wrongly
# when the package spans several files (`intentgate.allow` came out true for a denied input).

# Monday 2027-01-04 10:00:00 UTC
monday_10 := 1799056800000

hour := 3600000

intents := {
	"refund-order": {"agents": ["spiffe://example.org/agent/support-*"]},
	"rotate-credential": {"agents": ["spiffe://example.org/agent/ops-*"]},
	"triage-ticket": {"agents": ["spiffe://example.org/agent/support-*", "spiffe://example.org/agent/triage"]},
}

base := {
	"agent": {"id": "spiffe://example.org/agent/support-1", "claims": {}},
	"intent": {"name": "refund-order", "version": "3", "params": {"order_id": "ORD-7"}},
	"task": {"id": "tsk_1", "history": []},
	"call": {"upstream": "orders", "tool": "get_order", "step": "lookup", "arguments": {"order_id": "ORD-7"}},
	"workflow": {"ok": true, "violations": []},
	"context": {"now": "2027-01-04T10:00:00.000000Z", "now_ms": monday_10, "environment": "prod", "mode": "enforce"},
}

refund(amount, currency) := object.union(base, {"call": {
	"upstream": "payments", "tool": "refund", "step": "refund",
	"arguments": {"order_id": "ORD-7", "amount": amount, "currency": currency},
}})

rotation(now_ms, environment) := object.union(base, {
	"agent": {"id": "spiffe://example.org/agent/ops-1", "claims": {}},
	"intent": {"name": "rotate-credential", "version": "2", "params": {"service": "billing"}},
	"call": {"upstream": "secrets", "tool": "rotate_credential", "step": "rotate", "arguments": {"service": "billing"}},
	"context": {"now_ms": now_ms, "environment": environment, "mode": "enforce"},
})

# `with` must sit in the test bodies (not in a helper function) to be portable across engines.

test_conformant_call_is_allowed if {
	d1 := data.intentgate.decision with input as base with data.intentgate.intents as intents
	d1 == {"allow": true, "reasons": [], "hold": false, "ttl_seconds": 30}
}

test_workflow_violation_always_denies if {
	d := data.intentgate.decision with input as object.union(base, {"workflow": {"ok": false, "violations": ["step_out_of_order:refund"]}}) with data.intentgate.intents as intents
	d.allow == false
	d.reasons == ["workflow_violation"]
}

test_workflow_ok_must_be_exactly_true if {
	d := data.intentgate.decision with input as object.union(base, {"workflow": {"ok": "true"}}) with data.intentgate.intents as intents
	d.allow == false
}

test_missing_input_denies if {
	d := data.intentgate.decision with input as {} with data.intentgate.intents as intents
	d.allow == false
	"workflow_violation" in d.reasons
	"unknown_intent" in d.reasons
	d.hold == false
	d.ttl_seconds == 30
}

test_garbage_input_denies if {
	d := data.intentgate.decision with input as {"agent": 7, "call": "x", "workflow": []} with data.intentgate.intents as intents
	d.allow == false
}

test_unknown_intent if {
	d := data.intentgate.decision with input as object.union(base, {"intent": {"name": "exfiltrate"}}) with data.intentgate.intents as intents
	d.reasons == ["unknown_intent"]
}

test_agent_not_permitted if {
	d := data.intentgate.decision with input as object.union(base, {"agent": {"id": "spiffe://evil.example/agent/support-1"}}) with data.intentgate.intents as intents
	d.allow == false
	d.reasons == ["agent_not_permitted"]
}

test_any_agent_pattern_of_the_intent_permits if {
	inp := object.union(base, {
		"agent": {"id": "spiffe://example.org/agent/triage"},
		"intent": {"name": "triage-ticket"},
	})
	d := data.intentgate.decision with input as inp with data.intentgate.intents as intents
	d.allow == true
	d2 := data.intentgate.decision with input as object.union(inp, {"agent": {"id": "spiffe://example.org/agent/triage-2"}}) with data.intentgate.intents as intents
	d2.reasons == ["agent_not_permitted"]
}

test_agent_id_must_be_a_string if {
	d := data.intentgate.decision with input as object.union(base, {"agent": {"id": ["spiffe://example.org/agent/support-1"]}}) with data.intentgate.intents as intents
	d.reasons == ["agent_not_permitted"]
}

test_agent_glob_stays_within_a_path_segment if {
	d := data.intentgate.decision with input as object.union(base, {"agent": {"id": "spiffe://example.org/agent/support-eu/7"}}) with data.intentgate.intents as intents
	d.reasons == ["agent_not_permitted"]
	escape := "spiffe://example.org/agent/support-x/../../ops-1/intentgate-admin"
	e := data.intentgate.decision with input as object.union(base, {"agent": {"id": escape}}) with data.intentgate.intents as intents
	e.reasons == ["agent_not_permitted"]
	deep := {"refund-order": {"agents": ["spiffe://example.org/agent/**"]}}
	f := data.intentgate.decision with input as object.union(base, {"agent": {"id": "spiffe://example.org/agent/support-eu/7"}}) with data.intentgate.intents as deep
	f.allow == true
}

test_small_refund_allowed_with_short_ttl if {
	d := data.intentgate.decision with input as refund(30, "EUR") with data.intentgate.intents as intents
	d == {"allow": true, "reasons": [], "hold": false, "ttl_seconds": 15}
}

test_refund_at_hold_threshold_is_not_held if {
	d8 := data.intentgate.decision with input as refund(1000, "EUR") with data.intentgate.intents as intents
	d8.hold == false
}

test_large_refund_is_held if {
	d := data.intentgate.decision with input as refund(1000.01, "EUR") with data.intentgate.intents as intents
	d.allow == true
	d.hold == true
	d.reasons == ["large_refund"]
}

test_refund_over_limit_denied if {
	d := data.intentgate.decision with input as refund(3000.5, "EUR") with data.intentgate.intents as intents
	d.allow == false
	d.reasons == ["large_refund", "refund_over_limit"]
}

test_refund_limits_per_currency if {
	d11 := data.intentgate.decision with input as refund(3200, "USD") with data.intentgate.intents as intents
	d11.allow == true
	d12 := data.intentgate.decision with input as refund(3200, "GBP") with data.intentgate.intents as intents
	d12.allow == false
}

test_refund_unsupported_currency if {
	d := data.intentgate.decision with input as refund(10, "JPY") with data.intentgate.intents as intents
	d.allow == false
	d.reasons == ["refund_currency_unsupported"]
}

test_refund_amount_must_be_positive_number if {
	d14 := data.intentgate.decision with input as refund("10", "EUR") with data.intentgate.intents as intents
	d14.reasons == ["refund_amount_invalid"]
	d15 := data.intentgate.decision with input as refund(0, "EUR") with data.intentgate.intents as intents
	d15.reasons == ["refund_amount_invalid"]
	d16 := data.intentgate.decision with input as refund(-5, "EUR") with data.intentgate.intents as intents
	d16.reasons == ["refund_amount_invalid"]
}

test_rotation_inside_window if {
	d17 := data.intentgate.decision with input as rotation(monday_10, "prod") with data.intentgate.intents as intents
	d17.allow == true
}

test_rotation_window_edges if {
	# 08:00:00 opens, 17:59:59 is inside, 18:00:00 closes, 07:59:59 is outside
	d18 := data.intentgate.decision with input as rotation(monday_10 - (2 * hour), "prod") with data.intentgate.intents as intents
	d18.allow == true
	d19 := data.intentgate.decision with input as rotation((monday_10 + (8 * hour)) - 1000, "prod") with data.intentgate.intents as intents
	d19.allow == true
	d20 := data.intentgate.decision with input as rotation(monday_10 + (8 * hour), "prod") with data.intentgate.intents as intents
	d20.reasons == ["outside_change_window"]
	d21 := data.intentgate.decision with input as rotation((monday_10 - (2 * hour)) - 1000, "prod") with data.intentgate.intents as intents
	d21.reasons == ["outside_change_window"]
}

test_rotation_not_on_weekends if {
	saturday_10 := monday_10 - (2 * 24 * hour)
	d22 := data.intentgate.decision with input as rotation(saturday_10, "prod") with data.intentgate.intents as intents
	d22.reasons == ["outside_change_window"]
	d23 := data.intentgate.decision with input as rotation(saturday_10 + (24 * hour), "prod") with data.intentgate.intents as intents
	d23.reasons == ["outside_change_window"]
}

test_rotation_anytime_outside_prod if {
	d24 := data.intentgate.decision with input as rotation(monday_10 - (2 * 24 * hour), "staging") with data.intentgate.intents as intents
	d24.allow == true
}

test_rotation_without_clock_denied if {
	inp := json.remove(rotation(monday_10, "prod"), ["context/now_ms"])
	d25 := data.intentgate.decision with input as inp with data.intentgate.intents as intents
	d25.reasons == ["outside_change_window"]
}

test_rotation_without_environment_counts_as_prod if {
	saturday_10 := monday_10 - (2 * 24 * hour)
	inp := json.remove(rotation(saturday_10, "prod"), ["context/environment"])
	d := data.intentgate.decision with input as inp with data.intentgate.intents as intents
	d.reasons == ["outside_change_window"]
	d2 := data.intentgate.decision with input as rotation(saturday_10, 7) with data.intentgate.intents as intents
	d2.reasons == ["outside_change_window"]
}

test_rotation_clock_must_be_whole_milliseconds_in_range if {
	d := data.intentgate.decision with input as rotation(monday_10 + 0.5, "prod") with data.intentgate.intents as intents
	d.reasons == ["outside_change_window"]
	d2 := data.intentgate.decision with input as rotation(monday_10 * 1000000, "prod") with data.intentgate.intents as intents
	d2.reasons == ["outside_change_window"]
	d3 := data.intentgate.decision with input as rotation("2027-01-04T10:00:00Z", "prod") with data.intentgate.intents as intents
	d3.reasons == ["outside_change_window"]
}

test_decision_shape_for_any_input if {
	d := data.intentgate.decision with input as {"input": base} with data.intentgate.intents as intents
	object.keys(d) == {"allow", "reasons", "hold", "ttl_seconds"}
	d.allow == false
	is_array(d.reasons)
	is_number(d.ttl_seconds)
}
