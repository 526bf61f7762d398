"""An outgoing-mail service as an MCP tool server; nothing leaves the machine.

Start (from the repository root; run it as a module, by path it would shadow the stdlib
``email`` package)::

    python -m agents_examples.servers.email [--data-dir DIR]

Tools: ``send(to, subject, body)`` queues a message in the ``outbox`` table of ``email.db``;
``list_outbox()`` shows what was queued, oldest first.  The outbox starts empty.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from ._common import Call, Tool, now_iso, serve, transaction

__all__ = ["TOOLS", "main"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, to_addr TEXT NOT NULL, subject TEXT NOT NULL, body TEXT NOT NULL,
    queued_at TEXT NOT NULL);
"""


def seed(db: sqlite3.Connection) -> None:
    """The outbox starts empty."""


def _message(row: sqlite3.Row) -> dict[str, Any]:
    return {"message_id": f"MSG-{row['seq']:06d}", "to": row["to_addr"], "subject": row["subject"],
            "body": row["body"], "queued_at": row["queued_at"]}


def send(call: Call) -> dict[str, Any]:
    args = call.args
    with transaction(call.db) as db:
        seq = db.execute("INSERT INTO outbox (to_addr, subject, body, queued_at) VALUES (?, ?, ?, ?)",
                         (args["to"], args["subject"], args["body"], now_iso())).lastrowid
        row = db.execute("SELECT * FROM outbox WHERE seq = ?", (seq,)).fetchone()
    message = _message(row)
    return {"message_id": message["message_id"], "to": message["to"], "status": "queued",
            "queued_at": message["queued_at"]}


def list_outbox(call: Call) -> dict[str, Any]:
    messages = [_message(r) for r in call.db.execute("SELECT * FROM outbox ORDER BY seq")]
    return {"count": len(messages), "messages": messages}


TOOLS = [
    Tool("send", "Send an email (queued in the outbox).", send,
         {"to": {"type": "string", "pattern": r"^[^@\s]+@[^@\s]+\.[^@\s]+$", "maxLength": 254},
          "subject": {"type": "string", "minLength": 1, "maxLength": 200},
          "body": {"type": "string", "minLength": 1, "maxLength": 10000}},
         ("to", "subject", "body"), read_only=False),
    Tool("list_outbox", "List the messages queued so far, oldest first.", list_outbox),
]


def main() -> None:
    serve("email", TOOLS, schema=SCHEMA, seed=seed)


if __name__ == "__main__":
    main()
