# Reads: an upstream's resources (resources/read) and prompts (prompts/get).
#
# Reads are not part of any workflow, so no task or step is involved. A read is allowed when
#   - the agent may declare at least one intent that calls a tool of that upstream, and
#   - the resource URI (or prompt name) matches one of the patterns listed for the upstream
#     under data.intentgate.reads.resources[upstream] (or .prompts[upstream]).
# Patterns are globs with "/" as the delimiter: "*" stays within a path segment, "**" does
# not. Nothing is readable unless listed.
#
# Input: {"action": "resources/read" | "prompts/get", "agent": {"id": ...},
#         "read": {"upstream": ..., "name": <uri or prompt name>, "arguments": {...}},
#         "context": {...}}
package intentgate

import rego.v1

_read_kinds := {"resources/read": "resources", "prompts/get": "prompts"}

_read_kind := _read_kinds[_action]

deny contains "read_not_permitted" if {
	_read_kind
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
