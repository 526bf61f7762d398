# Credential rotation in prod only inside the change window: Monday-Friday, 08:00-18:00 UTC.
# Time comes from input.context.now_ns (RFC 3339 parsing is not portable across engines).
package intentgate

import rego.v1

_rotation if _tool == "secrets.rotate_credential"

deny contains "outside_change_window" if {
	_rotation
	input.context.environment == "prod"
	not _in_change_window
}

_in_change_window if {
	ns := input.context.now_ns
	is_number(ns)
	day := time.weekday(ns)
	not day in {"Saturday", "Sunday"}
	[hour, _, _] := time.clock(ns)
	hour >= 8
	hour < 18
}
