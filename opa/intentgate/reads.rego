# Reads: an upstream's resources (resources/read, resources/subscribe) and prompts (prompts/get),
# and completing an argument of either (completion/complete, input.read.ref "prompt" or "resource").
#
# Reads are not part of any workflow, so no task or step is involved. A read is allowed when
#   - the agent may declare at least one intent that calls a tool of that upstream, and
#   - the resource URI (or prompt name) matches one of the patterns listed for the upstream
#     under data.intentgate.reads.resources[upstream] (or .prompts[upstream]).
# Patterns are globs with "/" as the delimiter: "*" stays within a path segment, "**" does
# not. Nothing is readable unless listed.
#
# Input: {"action": "resources/read" | "resources/subscribe" | "prompts/get" | "completion/complete",
#         "agent": {"id": ...},
#         "read": {"upstream": ..., "name": <uri, URI template or prompt name>, "ref": "prompt" | "resource" | null,
#                  "arguments": {...}},
#         "context": {...}}
package intentgate

import rego.v1

_read_kinds := {"resources/read": "resources", "prompts/get": "prompts", "resources/subscribe": "resources"}

_read_kind := _read_kinds[_action]

# completing an argument of a prompt or a resource template is a read of that prompt or template
_read_kind := "prompts" if {
	_action == "completion/complete"
	input.read.ref == "prompt"
}

_read_kind := "resources" if {
	_action == "completion/complete"
	input.read.ref == "resource"
}

_read_actions := {"resources/read", "resources/subscribe", "prompts/get", "completion/complete"}

# METADATA
# title: Read not permitted
# description: >-
#   Resources and prompts are readable only when listed for their upstream under
#   data.intentgate.reads and the agent may declare an intent that uses that upstream; this read
#   is not.
deny contains "read_not_permitted" if {
	_action in _read_actions
	not _read_permitted
}

_read_permitted if {
	_agent_uses_upstream(input.read.upstream)
	_read_listed
}

_agent_uses_upstream(upstream) if {
	is_string(upstream)
	prefix := concat("", [upstream, "."])
	some intent in data.intentgate.intents
	_may_declare(intent)
	some step in intent.steps
	startswith(step.tool, prefix)
}

_read_listed if {
	is_string(input.read.name)
	some pattern in data.intentgate.reads[_read_kind][input.read.upstream]
	glob.match(pattern, ["/"], input.read.name)
}
