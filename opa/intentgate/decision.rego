# IntentGate base policy.
#
# Queried at data.intentgate.decision with the input documented in DESIGN.md; answers
# {"allow": bool, "reasons": [string], "hold": bool, "ttl_seconds": int} for every input.
# Missing or malformed input denies. The workflow verdict is final: whenever the gateway's
# graph check failed, the call is denied whatever other rules say.
package intentgate

import rego.v1

decision := {
	"allow": allow,
	"reasons": sort([r | some r in reasons]),
	"hold": hold,
	"ttl_seconds": ttl_seconds,
}

default allow := false

allow if count(deny) == 0

reasons := deny | hold_reasons

default hold := false

hold if count(hold_reasons) > 0

default ttl_seconds := 30

ttl_seconds := t if {
	t := data.intentgate.limits.token_ttl_seconds[input.call.upstream]
	is_number(t)
}

# --- the workflow graph can never be bypassed ----------------------------------------

# --- what is being decided ----------------------------------------------------------------
# A tools/call (inputs without `action` are tool calls), a read of an upstream's resource or
# prompt (see reads.rego), the beginning of a task (see tasks.rego), or what an upstream asks
# of the agent's client during a call (see asks.rego). Anything else denies.

default _action := "tools/call"

_action := input.action

_tool_call if _action == "tools/call"

# METADATA
# title: Unknown action
# description: >-
#   The policy was asked about an action it does not know (not a tool call, read, task start or
#   ask), and refuses whatever it does not know.
deny contains "unknown_action" if {
	not _action in {"tools/call", "resources/read", "resources/subscribe", "prompts/get", "completion/complete", "task/begin"}
	not _action in _ask_actions
}

# METADATA
# title: Workflow check failed
# description: >-
#   The gateway's check of the intent's graph failed (a step out of order, a wrong tool or an
#   argument outside the step's constraints); the policy never lets such a call through.
deny contains "workflow_violation" if {
	_tool_call
	not input.workflow.ok == true
}

# --- the intent and who may declare it -------------------------------------------------

_intent := data.intentgate.intents[input.intent.name]

# METADATA
# title: Unknown intent
# description: >-
#   The call or task names an intent that is not loaded.
deny contains "unknown_intent" if {
	_action in {"tools/call", "task/begin"}
	not _intent
}

# METADATA
# title: Agent may not declare the intent
# description: >-
#   The calling agent's id matches none of the intent's `agents` patterns.
deny contains "agent_not_permitted" if {
	_intent
	not _agent_permitted
}

_agent_permitted if _may_declare(_intent)

# The calling agent matches one of the intent's agent patterns, segment by segment: "*" stays within
# one "/"-separated segment ("spiffe://example.org/agent/support-*" does not admit
# ".../support-x/../../ops-1"), "**" crosses them.
_may_declare(intent) if {
	is_string(input.agent.id)
	some pattern in intent.agents
	glob.match(pattern, ["/"], input.agent.id)
}

_tool := concat(".", [input.call.upstream, input.call.tool])
