"""Canonical JSON (RFC 8785, JCS) and the digests built on it.

The arguments digest in an action token and the audit log's record hashes both hash the
canonical form, so two parties that parse the same JSON always agree on the digest
whatever key order or number spelling went over the wire.
"""

from __future__ import annotations

import hashlib
from typing import Any

import rfc8785

__all__ = ["arguments_sha256", "canonical_json", "sha256_hex"]


def canonical_json(value: Any) -> bytes:
    """RFC 8785 canonical serialisation of a JSON value (raises on NaN/Infinity, huge ints)."""
    return rfc8785.dumps(value)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def arguments_sha256(arguments: dict[str, Any]) -> str:
    """Hex SHA-256 of the canonical JSON of tool-call arguments."""
    return sha256_hex(canonical_json(arguments))
