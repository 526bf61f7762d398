# Refunds: a per-currency ceiling, and a reviewer for large amounts.
package intentgate

import rego.v1

_refund if _tool == "payments.refund"

_amount := input.call.arguments.amount

_currency := input.call.arguments.currency

_refund_limits := data.intentgate.limits.refund

deny contains "refund_amount_invalid" if {
	_refund
	not _valid_amount
}

_valid_amount if {
	is_number(_amount)
	_amount > 0
}

deny contains "refund_currency_unsupported" if {
	_refund
	not _refund_limits.max[_currency]
}

deny contains "refund_over_limit" if {
	_refund
	_valid_amount
	_amount > _refund_limits.max[_currency]
}

hold_reasons contains "large_refund" if {
	_refund
	_valid_amount
	_amount > _refund_limits.hold_above[_currency]
}
