"""The payment provider as an MCP tool server: refunds against captured order payments.

Start (from the repository root; ``INTENTGATE_JWKS`` is required)::

    INTENTGATE_JWKS=var/jwks.json python -m agents_examples.servers.payments [--data-dir DIR]
    INTENTGATE_JWKS=http://127.0.0.1:8080/.well-known/jwks.json python -m agents_examples.servers.payments

It trusts nothing but IntentGate's action tokens: every call must carry one in
``_meta["intentgate/token"]``, minted for upstream ``payments``, this tool and these exact
arguments, and unused (burnt in ``payments-jti.db`` in the data dir).  Otherwise the call is
refused (``refused: <reason code>``) and nothing happens.

Tools: ``refund(order_id, amount, currency, reason=None)`` and ``list_refunds(order_id)``.
The captured payments are the orders server's seed orders (``ORD-5001`` 42.50 EUR,
``ORD-5003`` 1800.00 EUR, ``ORD-5004`` 75.00 USD, ...).  A refund fails for an unknown
order, a currency other than the payment's, or more than what is left to refund.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from ._common import Call, Tool, ToolFailure, amount, cents, now_iso, serve, transaction
from .orders import ORDER_ID, ORDERS

__all__ = ["TOOLS", "main"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    order_id TEXT PRIMARY KEY, customer_email TEXT NOT NULL, currency TEXT NOT NULL,
    amount_cents INTEGER NOT NULL, captured_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS refunds (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, order_id TEXT NOT NULL REFERENCES charges,
    amount_cents INTEGER NOT NULL, currency TEXT NOT NULL, reason TEXT, created_at TEXT NOT NULL,
    agent TEXT, task TEXT, intent TEXT, token_id TEXT);
"""


def seed(db: sqlite3.Connection) -> None:
    db.executemany("INSERT INTO charges VALUES (?, ?, ?, ?, ?)",
                   [(o["order_id"], o["customer_email"], o["currency"], o["total_cents"], o["placed_at"])
                    for o in ORDERS])


def _charge(db: sqlite3.Connection, order_id: str) -> tuple[sqlite3.Row, int]:
    """The order's captured payment and how much of it was refunded so far."""
    charge = db.execute("SELECT * FROM charges WHERE order_id = ?", (order_id,)).fetchone()
    if charge is None:
        raise ToolFailure("unknown_order", f"no payment was captured for order {order_id}")
    refunded = db.execute("SELECT coalesce(sum(amount_cents), 0) FROM refunds WHERE order_id = ?",
                          (order_id,)).fetchone()[0]
    return charge, refunded


def _refund_view(row: sqlite3.Row) -> dict[str, Any]:
    return {"refund_id": f"RF-{row['seq']:06d}", "order_id": row["order_id"], "amount": amount(row["amount_cents"]),
            "currency": row["currency"], "reason": row["reason"], "created_at": row["created_at"],
            "authorized_by": {"agent": row["agent"], "task": row["task"], "intent": row["intent"],
                              "token_id": row["token_id"]}}


def refund(call: Call) -> dict[str, Any]:
    order_id, currency, minor = call.args["order_id"], call.args["currency"], cents(call.args["amount"])
    detail = call.claims.detail if call.claims else None
    with transaction(call.db) as db:
        charge, refunded = _charge(db, order_id)
        if currency != charge["currency"]:
            raise ToolFailure("currency_mismatch", f"order {order_id} was paid in {charge['currency']}, not {currency}")
        remaining = charge["amount_cents"] - refunded
        if minor > remaining:
            raise ToolFailure("amount_exceeds_refundable",
                              f"only {amount(remaining):.2f} {currency} of order {order_id} is left to refund")
        seq = db.execute(
            "INSERT INTO refunds (order_id, amount_cents, currency, reason, created_at, agent, task, intent, token_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (order_id, minor, currency, call.args.get("reason"), now_iso(),
             call.claims.sub if call.claims else None, detail.task if detail else None,
             detail.intent if detail else None, call.claims.jti if call.claims else None),
        ).lastrowid
        row = db.execute("SELECT * FROM refunds WHERE seq = ?", (seq,)).fetchone()
    return {**_refund_view(row), "status": "succeeded", "remaining_refundable": amount(remaining - minor)}


def list_refunds(call: Call) -> dict[str, Any]:
    charge, refunded = _charge(call.db, call.args["order_id"])
    rows = call.db.execute("SELECT * FROM refunds WHERE order_id = ? ORDER BY seq", (charge["order_id"],))
    return {"order_id": charge["order_id"], "currency": charge["currency"], "captured": amount(charge["amount_cents"]),
            "refunded": amount(refunded), "remaining_refundable": amount(charge["amount_cents"] - refunded),
            "refunds": [_refund_view(r) for r in rows]}


TOOLS = [
    Tool("refund", "Refund part or all of an order's captured payment, in the payment's currency.", refund,
         {"order_id": ORDER_ID,
          "amount": {"type": "number", "exclusiveMinimum": 0, "description": "in major units, e.g. 42.50"},
          "currency": {"type": "string", "pattern": "^[A-Z]{3}$", "description": "ISO 4217, e.g. EUR"},
          "reason": {"type": "string", "minLength": 1, "maxLength": 500}},
         ("order_id", "amount", "currency"), read_only=False),
    Tool("list_refunds", "The refunds made on an order and what is left to refund.", list_refunds,
         {"order_id": ORDER_ID}, ("order_id",)),
]


def main() -> None:
    serve("payments", TOOLS, schema=SCHEMA, seed=seed, verify_tokens=True)


if __name__ == "__main__":
    main()
