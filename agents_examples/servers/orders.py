"""The shop's order system as an MCP tool server: look orders up, list a customer's orders.

Start (from the repository root)::

    python -m agents_examples.servers.orders [--data-dir DIR]

Tools: ``get_order(order_id)`` and ``list_orders(customer_email, page=1)`` (five orders a
page, newest first).  Seed orders: ``ORD-5001`` (42.50 EUR, the refund of ticket TCK-1001),
``ORD-5002`` (129.00 EUR, ticket TCK-1002), ``ORD-5003`` (1800.00 EUR, a large refund),
``ORD-5004`` (75.00 USD), and eleven older orders of alice.martin@example.com
(``ORD-5010`` ... ``ORD-5020``), so her orders fill three pages.
"""

from __future__ import annotations

import sqlite3
from datetime import date, timedelta
from typing import Any

from ._common import Call, Tool, ToolFailure, amount, serve

__all__ = ["ORDERS", "PAGE_SIZE", "TOOLS", "main"]

PAGE_SIZE = 5
ORDER_ID = {"type": "string", "pattern": "^ORD-[0-9]{1,12}$", "description": "e.g. ORD-5001"}
EMAIL = {"type": "string", "pattern": r"^[^@\s]+@[^@\s]+\.[^@\s]+$", "maxLength": 254}

_CATALOGUE = [("BK-101", "Paperback notebook", 1250), ("TEA-7", "Loose-leaf tea, 250 g", 890),
              ("CBL-2", "USB-C cable, 2 m", 1499), ("PEN-3", "Fountain pen", 3400)]


def _order(order_id: str, email: str, name: str, placed: str, status: str, currency: str,
           items: list[tuple[str, str, int, int]]) -> dict[str, Any]:
    return {"order_id": order_id, "customer_email": email, "customer_name": name, "placed_at": placed,
            "status": status, "currency": currency, "items": items,
            "total_cents": sum(qty * unit for _, _, qty, unit in items)}


ALICE = ("alice.martin@example.com", "Alice Martin")


def _alice_older(i: int) -> dict[str, Any]:
    """Alice's i-th older order: ORD-5010 on 2026-01-06, then one every nine days."""
    sku, name, unit = _CATALOGUE[i % len(_CATALOGUE)]
    placed = f"{date(2026, 1, 6) + timedelta(days=9 * i)}T10:00:00Z"
    return _order(f"ORD-{5010 + i}", *ALICE, placed, "delivered", "EUR", [(sku, name, 1 + i % 3, unit)])


ORDERS: list[dict[str, Any]] = [
    _order("ORD-5001", *ALICE, "2026-05-02T09:14:00Z", "delivered", "EUR",
           [("MUG-4", "Ceramic mug set (4 pieces)", 1, 4250)]),
    _order("ORD-5002", "bob.keller@example.com", "Bob Keller", "2026-04-20T16:02:00Z", "shipped", "EUR",
           [("HP-200", "Wireless headphones", 1, 12900)]),
    _order("ORD-5003", "carol.nguyen@example.com", "Carol Nguyen", "2026-04-28T11:30:00Z", "delivered", "EUR",
           [("LT-14", "Laptop 14-inch, 32 GB", 1, 180000)]),
    _order("ORD-5004", "dan.okafor@example.com", "Dan Okafor", "2026-04-11T08:45:00Z", "delivered", "USD",
           [("LMP-1", "Desk lamp", 1, 5500), ("BLB-1", "LED bulb", 2, 1000)]),
] + [_alice_older(i) for i in range(11)]

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    order_id TEXT PRIMARY KEY, customer_email TEXT NOT NULL, customer_name TEXT NOT NULL,
    placed_at TEXT NOT NULL, status TEXT NOT NULL, currency TEXT NOT NULL, total_cents INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS orders_by_customer ON orders (customer_email, placed_at);
CREATE TABLE IF NOT EXISTS order_items (
    order_id TEXT NOT NULL REFERENCES orders, line INTEGER NOT NULL, sku TEXT NOT NULL, name TEXT NOT NULL,
    quantity INTEGER NOT NULL, unit_price_cents INTEGER NOT NULL, PRIMARY KEY (order_id, line));
"""


def seed(db: sqlite3.Connection) -> None:
    for o in ORDERS:
        db.execute("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (o["order_id"], o["customer_email"], o["customer_name"], o["placed_at"], o["status"],
                    o["currency"], o["total_cents"]))
        db.executemany("INSERT INTO order_items VALUES (?, ?, ?, ?, ?, ?)",
                       [(o["order_id"], n, *item) for n, item in enumerate(o["items"], 1)])


def _summary(row: Any) -> dict[str, Any]:
    return {"order_id": row["order_id"], "placed_at": row["placed_at"], "status": row["status"],
            "total": amount(row["total_cents"]), "currency": row["currency"]}


def get_order(call: Call) -> dict[str, Any]:
    row = call.db.execute("SELECT * FROM orders WHERE order_id = ?", (call.args["order_id"],)).fetchone()
    if row is None:
        raise ToolFailure("unknown_order", f"there is no order {call.args['order_id']}")
    items = call.db.execute("SELECT * FROM order_items WHERE order_id = ? ORDER BY line", (row["order_id"],))
    return {**_summary(row), "customer_email": row["customer_email"], "customer_name": row["customer_name"],
            "items": [{"sku": i["sku"], "name": i["name"], "quantity": i["quantity"],
                       "unit_price": amount(i["unit_price_cents"])} for i in items]}


def list_orders(call: Call) -> dict[str, Any]:
    email, page = call.args["customer_email"], call.args.get("page", 1)
    total = call.db.execute("SELECT count(*) FROM orders WHERE customer_email = ?", (email,)).fetchone()[0]
    rows = call.db.execute(
        "SELECT * FROM orders WHERE customer_email = ? ORDER BY placed_at DESC, order_id LIMIT ? OFFSET ?",
        (email, PAGE_SIZE, (page - 1) * PAGE_SIZE),
    ).fetchall()
    pages = -(-total // PAGE_SIZE)
    return {"customer_email": email, "page": page, "page_size": PAGE_SIZE, "total_orders": total,
            "total_pages": pages, "next_page": page + 1 if page < pages else None,
            "orders": [_summary(r) for r in rows]}


TOOLS = [
    Tool("get_order", "Look up one order: customer, status, items and total.", get_order,
         {"order_id": ORDER_ID}, ("order_id",)),
    Tool("list_orders", f"List a customer's orders, newest first, {PAGE_SIZE} a page.", list_orders,
         {"customer_email": EMAIL, "page": {"type": "integer", "minimum": 1, "default": 1}}, ("customer_email",)),
]


def main() -> None:
    serve("orders", TOOLS, schema=SCHEMA, seed=seed)


if __name__ == "__main__":
    main()
