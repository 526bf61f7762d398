# Credential rotation in prod only inside the change window: Monday-Friday, 08:00-18:00 UTC.
# An environment other than "prod" is not restricted; a missing or malformed one counts as prod.
# Time comes from input.context.now_ms, epoch milliseconds: RFC 3339 parsing is not portable
# (rego-cpp's time.parse_rfc3339_ns rejects the "Z" suffix, regorus fails the whole evaluation on
# a malformed string), and epoch nanoseconds exceed the exactly representable JSON integers.
package intentgate

import rego.v1

_rotation if _tool == "secrets.rotate_credential"

# METADATA
# title: Outside the change window
# description: >-
#   Credentials are rotated in prod only Monday to Friday, 08:00 to 18:00 UTC; this call came
#   outside that window (or without a usable time).
deny contains "outside_change_window" if {
	_rotation
	not _unrestricted_environment
	not _in_change_window
}

_unrestricted_environment if {
	is_string(input.context.environment)
	input.context.environment != "prod"
}

# Only whole milliseconds from 1970 to 2100 reach the time builtins: engines disagree on
# fractional and out-of-range nanoseconds (undefined on one, an answer or an error on another).
_in_change_window if {
	ms := input.context.now_ms
	is_number(ms)
	ms >= 0
	ms < 4102444800000
	ms == round(ms)
	ns := round(ms) * 1000000
	day := time.weekday(ns)
	not day in {"Saturday", "Sunday"}
	[hour, _, _] := time.clock(ns)
	hour >= 8
	hour < 18
}
