"""A credential vault as an MCP tool server: metadata and rotation, never secret material.

Start (from the repository root; run it as a module, by path it would shadow the stdlib
``secrets`` module)::

    python -m agents_examples.servers.secrets [--data-dir DIR]

Tools: ``describe_credential(service)`` (kind, owner, current version, versions still valid;
the secret values stay in the vault) and ``rotate_credential(service, grace_period_seconds)``
(a new version becomes current, the previous one stays valid for the grace period).  Seed
services: ``billing-api`` (version 3), ``crm-sync`` (version 1), ``warehouse-db`` (version 7).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

from ._common import Call, Tool, ToolFailure, now_iso, serve, transaction

__all__ = ["SERVICES", "TOOLS", "main"]

SERVICE = {"type": "string", "pattern": "^[a-z][a-z0-9-]{1,62}$", "description": "e.g. billing-api"}

# service, kind, owner team, owner email, current version, when it was issued
SERVICES = [
    ("billing-api", "api_key", "payments-platform", "payments-oncall@example.com", 3, "2026-02-01T09:00:00Z"),
    ("crm-sync", "oauth_client_secret", "customer-data", "crm-owners@example.com", 1, "2025-11-20T12:00:00Z"),
    ("warehouse-db", "database_password", "logistics", "logistics-dba@example.com", 7, "2026-03-15T06:30:00Z"),
]

SCHEMA = """
CREATE TABLE IF NOT EXISTS credentials (
    service TEXT PRIMARY KEY, kind TEXT NOT NULL, owner_team TEXT NOT NULL, owner_email TEXT NOT NULL,
    current_version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    service TEXT NOT NULL REFERENCES credentials, version INTEGER NOT NULL, material TEXT NOT NULL,
    created_at TEXT NOT NULL, valid_until TEXT, PRIMARY KEY (service, version));
"""


def seed(db: sqlite3.Connection) -> None:
    for service, kind, team, email, version, created in SERVICES:
        db.execute("INSERT INTO credentials VALUES (?, ?, ?, ?, ?)", (service, kind, team, email, version))
        material = "seed-" + hashlib.sha256(f"{service}/{version}".encode()).hexdigest()
        db.execute("INSERT INTO versions VALUES (?, ?, ?, ?, NULL)", (service, version, material, created))


def _credential(db: sqlite3.Connection, service: str) -> sqlite3.Row:
    row = db.execute("SELECT * FROM credentials WHERE service = ?", (service,)).fetchone()
    if row is None:
        raise ToolFailure("unknown_service", f"no credential is managed for {service}")
    return row


def describe_credential(call: Call) -> dict[str, Any]:
    row = _credential(call.db, call.args["service"])
    versions = call.db.execute(  # never the material column
        "SELECT version, created_at, valid_until FROM versions WHERE service = ? AND"
        " (valid_until IS NULL OR valid_until > ?) ORDER BY version DESC", (row["service"], now_iso()))
    return {"service": row["service"], "kind": row["kind"], "owner_team": row["owner_team"],
            "owner_email": row["owner_email"], "current_version": row["current_version"],
            "valid_versions": [dict(v) for v in versions]}


def rotate_credential(call: Call) -> dict[str, Any]:
    now = datetime.now(UTC).replace(microsecond=0)
    until = (now + timedelta(seconds=call.args["grace_period_seconds"])).strftime("%Y-%m-%dT%H:%M:%SZ")
    with transaction(call.db) as db:
        row = _credential(db, call.args["service"])
        old, new = row["current_version"], row["current_version"] + 1
        db.execute("UPDATE versions SET valid_until = ? WHERE service = ? AND version = ?",
                   (until, row["service"], old))
        db.execute("INSERT INTO versions VALUES (?, ?, ?, ?, NULL)",
                   (row["service"], new, os.urandom(24).hex(), now_iso()))
        db.execute("UPDATE credentials SET current_version = ? WHERE service = ?", (new, row["service"]))
    return {"service": row["service"], "previous_version": old, "current_version": new,
            "previous_valid_until": until, "rotated_at": now.strftime("%Y-%m-%dT%H:%M:%SZ")}


TOOLS = [
    Tool("describe_credential", "A service credential's metadata (never the secret itself).", describe_credential,
         {"service": SERVICE}, ("service",)),
    Tool("rotate_credential", "Issue a new credential version; the old one stays valid for the grace period.",
         rotate_credential,
         {"service": SERVICE, "grace_period_seconds": {"type": "integer", "minimum": 0, "maximum": 86400}},
         ("service", "grace_period_seconds"), read_only=False),
]


def main() -> None:
    serve("secrets", TOOLS, schema=SCHEMA, seed=seed)


if __name__ == "__main__":
    main()
