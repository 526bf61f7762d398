package intentgate_reads_test

import rego.v1

# Full data.intentgate references: see decision_test.rego.

intents := {
	"refund-order": {
		"agents": ["spiffe://example.org/agent/support-*"],
		"steps": {"read_ticket": {"tool": "tickets.get_ticket"}, "refund": {"tool": "payments.refund"}},
	},
	"rotate-credential": {
		"agents": ["spiffe://example.org/agent/ops-*"],
		"steps": {"describe": {"tool": "secrets.describe_credential"}},
	},
}

reads := {
	"resources": {"tickets": ["tickets://TCK-*", "tickets://queues/*"], "payments": ["payments://rates/**"]},
	"prompts": {"tickets": ["summarise_ticket"]},
}

support := {"id": "spiffe://example.org/agent/support-1", "claims": {}}

read(upstream, uri) := {
	"action": "resources/read", "agent": support,
	"read": {"upstream": upstream, "name": uri, "arguments": {}},
	"context": {"environment": "prod", "mode": "enforce"},
}

prompt(upstream, name) := object.union(read(upstream, name), {"action": "prompts/get"})

test_listed_resource_of_a_used_upstream_is_readable if {
	d := data.intentgate.decision with input as read("tickets", "tickets://TCK-1001") with data.intentgate.intents as intents with data.intentgate.reads as reads
	d == {"allow": true, "reasons": [], "hold": false, "ttl_seconds": 30}
}

test_unlisted_resource_denied if {
	d := data.intentgate.decision with input as read("tickets", "tickets://customers/all") with data.intentgate.intents as intents with data.intentgate.reads as reads
	d.reasons == ["read_not_permitted"]
}

test_star_stays_in_one_segment_and_double_star_does_not if {
	d1 := data.intentgate.decision with input as read("tickets", "tickets://queues/eu/vip") with data.intentgate.intents as intents with data.intentgate.reads as reads
	d1.reasons == ["read_not_permitted"]
	d2 := data.intentgate.decision with input as read("payments", "payments://rates/eur/2027") with data.intentgate.intents as intents with data.intentgate.reads as reads
	d2.allow == true
}

test_upstream_the_agent_never_uses_is_not_readable if {
	inp := object.union(read("tickets", "tickets://TCK-1001"), {"agent": {"id": "spiffe://example.org/agent/ops-1"}})
	d := data.intentgate.decision with input as inp with data.intentgate.intents as intents with data.intentgate.reads as reads
	d.reasons == ["read_not_permitted"]
}

test_upstream_prefix_is_not_enough if {
	# "tick" is a prefix of "tickets", not an upstream the agent uses
	d := data.intentgate.decision with input as read("tick", "tickets://TCK-1001") with data.intentgate.intents as intents with data.intentgate.reads as object.union(reads, {"resources": {"tick": ["**"]}})
	d.reasons == ["read_not_permitted"]
}

test_prompts_listed_separately if {
	d1 := data.intentgate.decision with input as prompt("tickets", "summarise_ticket") with data.intentgate.intents as intents with data.intentgate.reads as reads
	d1.allow == true
	d2 := data.intentgate.decision with input as prompt("tickets", "tickets://TCK-1001") with data.intentgate.intents as intents with data.intentgate.reads as reads
	d2.reasons == ["read_not_permitted"]
}

test_nothing_readable_without_reads_data if {
	d := data.intentgate.decision with input as read("tickets", "tickets://TCK-1001") with data.intentgate.intents as intents with data.intentgate.reads as {}
	d.reasons == ["read_not_permitted"]
}

test_read_is_not_judged_as_a_tool_call if {
	# no task, intent or workflow in a read's input: none of the tool-call rules fire
	d := data.intentgate.decision with input as read("tickets", "tickets://nope") with data.intentgate.intents as intents with data.intentgate.reads as reads
	d.reasons == ["read_not_permitted"]
}

test_unknown_action_denied if {
	inp := object.union(read("tickets", "tickets://TCK-1001"), {"action": "resources/write"})
	d := data.intentgate.decision with input as inp with data.intentgate.intents as intents with data.intentgate.reads as reads
	d.allow == false
	"unknown_action" in d.reasons
	inp2 := object.union(read("tickets", "tickets://TCK-1001"), {"action": 7})
	d2 := data.intentgate.decision with input as inp2 with data.intentgate.intents as intents with data.intentgate.reads as reads
	"unknown_action" in d2.reasons
}

test_malformed_read_denied if {
	d := data.intentgate.decision with input as {"action": "resources/read", "agent": support, "read": {"upstream": 3, "name": ["x"]}} with data.intentgate.intents as intents with data.intentgate.reads as reads
	d.reasons == ["read_not_permitted"]
}

test_subscribe_is_a_read_of_the_resource if {
	i := object.union(read("tickets", "tickets://TCK-1001"), {"action": "resources/subscribe"})
	d := data.intentgate.decision with input as i with data.intentgate.intents as intents with data.intentgate.reads as reads
	d.allow
	j := object.union(read("tickets", "tickets://customers/all"), {"action": "resources/subscribe"})
	e := data.intentgate.decision with input as j with data.intentgate.intents as intents with data.intentgate.reads as reads
	e.reasons == ["read_not_permitted"]
}

test_completion_reads_the_prompt_or_template_it_completes if {
	p := object.union(prompt("tickets", "summarise_ticket"), {"action": "completion/complete", "read": {"ref": "prompt"}})
	d := data.intentgate.decision with input as p with data.intentgate.intents as intents with data.intentgate.reads as reads
	d.allow
	r := object.union(read("tickets", "tickets://{id}"), {"action": "completion/complete", "read": {"ref": "resource"}})
	e := data.intentgate.decision with input as r with data.intentgate.intents as intents with data.intentgate.reads as reads
	e.reasons == ["read_not_permitted"]
	u := object.union(prompt("tickets", "summarise_ticket"), {"action": "completion/complete", "read": {"ref": "other"}})
	f := data.intentgate.decision with input as u with data.intentgate.intents as intents with data.intentgate.reads as reads
	not f.allow
}
