package intentgate_asks_test

import rego.v1

# Full data.intentgate references: see decision_test.rego.

intents := {"file-claim": {
	"agents": ["spiffe://example.org/agent/support-*"],
	"steps": {
		"confirm": {"tool": "claims.confirm", "asks": ["elicitation"]},
		"draft": {"tool": "claims.draft", "asks": ["sampling", "roots"]},
		"lookup": {"tool": "claims.lookup"},
	},
}}

support := {"id": "spiffe://example.org/agent/support-1", "claims": {}}

ask(action, kind, tool, step) := {
	"action": action, "agent": support, "intent": {"name": "file-claim"}, "task": {"id": "tsk_1"},
	"ask": {"kind": kind, "upstream": "claims", "tool": tool, "step": step, "request": {}},
	"context": {"environment": "prod", "mode": "enforce"},
}

decide(i) := d if {
	d := data.intentgate.decision with input as i with data.intentgate.intents as intents
}

test_listed_elicitation_allowed if {
	decide(ask("elicitation/create", "elicitation", "confirm", "confirm")).allow
}

test_url_mode_needs_its_own_listing if {
	decide(ask("elicitation/create", "elicitation_url", "confirm", "confirm")).reasons == ["ask_not_permitted"]
}

test_unlisted_kind_denied if {
	decide(ask("sampling/createMessage", "sampling", "confirm", "confirm")).reasons == ["ask_not_permitted"]
}

test_step_without_asks_denied if {
	decide(ask("roots/list", "roots", "lookup", "lookup")).reasons == ["ask_not_permitted"]
}

test_tool_must_be_the_steps if {
	decide(ask("sampling/createMessage", "sampling", "lookup", "draft")).reasons == ["ask_not_permitted"]
}

test_kind_must_match_action if {
	decide(ask("roots/list", "sampling", "draft", "draft")).reasons == ["ask_not_permitted"]
}

test_sampling_and_roots_allowed_where_listed if {
	decide(ask("sampling/createMessage", "sampling", "draft", "draft")).allow
	decide(ask("roots/list", "roots", "draft", "draft")).allow
}

test_other_agent_denied if {
	i := object.union(
		ask("elicitation/create", "elicitation", "confirm", "confirm"),
		{"agent": {"id": "spiffe://example.org/agent/ops-1", "claims": {}}},
	)
	"ask_not_permitted" in decide(i).reasons
}

test_no_task_no_ask if {
	i := object.union(ask("elicitation/create", "elicitation", "confirm", "confirm"), {"intent": {"name": null}})
	"ask_not_permitted" in decide(i).reasons
}

test_sampling_may_not_pull_other_servers_context if {
	i := object.union(
		ask("sampling/createMessage", "sampling", "draft", "draft"),
		{"ask": {"request": {"includeContext": "allServers"}}},
	)
	decide(i).reasons == ["sampling_include_context"]
}
