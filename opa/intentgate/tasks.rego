# Beginning a task (input.action == "task/begin").
#
# Input: {"action": "task/begin", "agent": {"id", "claims"}, "issuer": {"name", "id", "via"} | null,
#         "intent": {"name", "version"}, "params": {...}, "reason": "...", "task": {"ttl_seconds"},
#         "context": {...}, "usage": {"open_tasks": {intent: n}, "budgets": {name: {...}}}}
#
# `issuer` is null when the agent begins the task itself. Who may begin an intent is the
# intent's `begin` (data.intentgate.intents[name].begin: "issuer", "agent" or both); the gateway
# checks it before asking, and the base policy checks it again, so a policy edit cannot let
# an agent begin what only a task issuer may. Organisations add their own rules below
# (data.intentgate.limits.open_tasks caps the open tasks an agent may hold per intent).
package intentgate

import rego.v1

_task_begin if _action == "task/begin"

# Negations go through helper rules, never straight onto a built-in or `in` over input that may
# be missing: OPA hoists such a reference out of the `not` (an undefined issuer then makes the
# whole rule undefined, not true), where regorus negates the undefined expression; both
# engines agree on `not <rule>`.
_issuer_given if is_object(input.issuer)

_begun_by_agent if {
	_task_begin
	not _issuer_given
}

_intent_begun_by(who) if who in _intent.begin

# METADATA
# title: Only a task issuer may begin this intent
# description: >-
#   The agent tried to begin a task of an intent whose `begin` does not include "agent"; a task
#   issuer (the host application or orchestrator) must begin it.
deny contains "task_issuer_required" if {
	_begun_by_agent
	_intent
	not _intent_begun_by("agent")
}

# METADATA
# title: Task issuer not permitted
# description: >-
#   A task issuer tried to begin a task of an intent whose `begin` does not include "issuer".
deny contains "issuer_not_permitted" if {
	_task_begin
	_issuer_given
	_intent
	not _intent_begun_by("issuer")
}

# METADATA
# title: Too many open tasks
# description: >-
#   The agent already holds as many open tasks of this intent as
#   data.intentgate.limits.open_tasks allows; it must end one first.
deny contains "too_many_open_tasks" if {
	_task_begin
	limit := data.intentgate.limits.open_tasks[input.intent.name]
	is_number(limit)
	open := object.get(object.get(input, ["usage", "open_tasks"], {}), input.intent.name, 0)
	open >= limit
}
