# Asks: what an upstream requests of the agent's client while one of its tools runs
# (sampling/createMessage, elicitation/create, roots/list).
#
# An ask is allowed when the task it belongs to is the agent's own and the step being called
# is for that very tool and lists the kind of ask under `asks` ("sampling", "elicitation",
# "elicitation_url" for URL mode, "roots"). Nothing may be asked unless listed, and a
# sampling request may not ask the client to add what it holds from other servers
# (includeContext "allServers").
#
# Input: {"action": "sampling/createMessage" | "elicitation/create" | "roots/list",
#         "agent": {"id", "claims"}, "intent": {"name"}, "task": {"id"},
#         "ask": {"kind", "upstream", "tool", "step", "request": {...the upstream's params}},
#         "context": {...}}
package intentgate

import rego.v1

_ask_actions := {"sampling/createMessage", "elicitation/create", "roots/list"}

_ask if _action in _ask_actions

# METADATA
# title: Ask not permitted
# description: >-
#   An upstream asked the agent's client for something (sampling, elicitation or roots) that the
#   step being called does not list under `asks`, or for a task or step that is not the agent's
#   own.
deny contains "ask_not_permitted" if {
	_ask
	not _ask_permitted
}

_ask_permitted if {
	_agent_permitted
	step := _intent.steps[input.ask.step]
	step.tool == concat(".", [input.ask.upstream, input.ask.tool])
	input.ask.kind in object.get(step, "asks", [])
	_ask_kind_matches_action
}

_ask_kind_matches_action if {
	_action == "sampling/createMessage"
	input.ask.kind == "sampling"
}

_ask_kind_matches_action if {
	_action == "elicitation/create"
	input.ask.kind in {"elicitation", "elicitation_url"}
}

_ask_kind_matches_action if {
	_action == "roots/list"
	input.ask.kind == "roots"
}

# METADATA
# title: Sampling may not include other servers' context
# description: >-
#   An upstream's sampling request asked the agent's client to add what it holds from other
#   servers (includeContext "allServers"); no server may read another's context that way.
deny contains "sampling_include_context" if {
	_action == "sampling/createMessage"
	input.ask.request.includeContext == "allServers"
}
