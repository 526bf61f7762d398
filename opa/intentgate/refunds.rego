# Refunds: a per-currency ceiling, and a reviewer for large amounts.
package intentgate

import rego.v1

_refund if _tool == "payments.refund"

_amount := input.call.arguments.amount

_currency := input.call.arguments.currency

_refund_limits := data.intentgate.limits.refund

# METADATA
# title: Invalid refund amount
# description: >-
#   A refund's amount must be a number above zero.
deny contains "refund_amount_invalid" if {
	_refund
	not _valid_amount
}

_valid_amount if {
	is_number(_amount)
	_amount > 0
}

# METADATA
# title: Refund currency not supported
# description: >-
#   Refunds are allowed only in the currencies that have a ceiling under
#   data.intentgate.limits.refund.max.
deny contains "refund_currency_unsupported" if {
	_refund
	not _refund_limits.max[_currency]
}

# METADATA
# title: Refund over the limit
# description: >-
#   The amount is above the per-currency refund ceiling (data.intentgate.limits.refund.max):
#   such a refund is denied outright, not held for a reviewer.
deny contains "refund_over_limit" if {
	_refund
	_valid_amount
	_amount > _refund_limits.max[_currency]
}

# METADATA
# title: Large refund
# description: >-
#   Refunds above data.intentgate.limits.refund.hold_above wait for a reviewer: check the order
#   and the customer's claim before approving.
hold_reasons contains "large_refund" if {
	_refund
	_valid_amount
	_amount > _refund_limits.hold_above[_currency]
}
