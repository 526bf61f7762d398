# Credential rotation in prod only inside the change window: Monday-Friday, 08:00-18:00 UTC.
# Time comes from input.context.now_ms, epoch milliseconds (RFC 3339 parsing is not portable
# across engines, and nanoseconds exceed the exactly representable JSON integers).
package intentgate

import rego.v1

_rotation if _tool == "secrets.rotate_credential"

deny contains "outside_change_window" if {
	_rotation
	input.context.environment == "prod"
	not _in_change_window
}

_in_change_window if {
	ms := input.context.now_ms
	is_number(ms)
	ns := ms * 1000000
	day := time.weekday(ns)
	not day in {"Saturday", "Sunday"}
	[hour, _, _] := time.clock(ns)
	hour >= 8
	hour < 18
}
