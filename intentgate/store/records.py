"""Records exchanged with the store (the table models never leave the store unfiltered)."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..canonical import sha256_hex
from ..merkle import leaf_hash

__all__ = [
    "GENESIS_HASH",
    "ApprovalRecord",
    "DecisionRecord",
    "GrantRecord",
    "Outcome",
    "TokenRecord",
    "HASH_VERSION",
    "chain_hash",
    "entry_hash",
    "leaf_of",
]

Outcome = Literal["allow", "deny", "hold", "would_deny"]
GENESIS_HASH = "0" * 64
_REAL_COLUMNS = ("at", "token_expires_at")


class DecisionRecord(BaseModel):
    """One decision as written to the audit log (``seq``/hashes are added by the store)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    at: float
    kind: str = "tools/call"
    agent: str
    intent: str | None = None
    intent_version: str | None = None
    task_id: str | None = None
    step: str | None = None
    upstream: str | None = None
    tool: str | None = None
    arguments_sha256: str | None = None
    arguments: dict[str, Any] | None = None
    outcome: Outcome
    reasons: list[str]
    policy_input: dict[str, Any] | None = None
    policy_result: dict[str, Any] | None = None
    policy_revision: str | None = None
    intents_revision: str | None = None
    token_jti: str | None = None
    token_expires_at: float | None = None
    masked: list[str] = Field(default_factory=list)
    timings_us: dict[str, Any] = Field(default_factory=dict)
    # set by the store
    seq: int | None = None
    prev_hash: str | None = None
    hash: str | None = None
    hash_v: int = 2


class TokenRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jti: str
    decision_id: str
    task_id: str
    agent: str
    audience: str
    tool: str
    arguments_sha256: str
    issued_at: float
    expires_at: float
    status: Literal["issued", "consumed", "revoked"] = "issued"
    consumed_at: float | None = None
    revoked_at: float | None = None


class ApprovalRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    decision_id: str
    agent: str
    task_id: str
    step: str
    tool: str
    arguments_sha256: str
    policy_revision: str
    reasons: list[str]
    created_at: float
    expires_at: float
    status: Literal["pending", "approved", "rejected", "used"] = "pending"
    decided_by: str | None = None
    decided_at: float | None = None
    note: str | None = None
    used_by_decision: str | None = None


class GrantRecord(BaseModel):
    """A break-glass grant (see ``GrantRow``)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    agent: str
    tool: str | None = None
    intent: str | None = None
    reason: str
    created_by: str
    created_at: float
    expires_at: float
    revoked_at: float | None = None
    revoked_by: str | None = None
    uses: int = 0
    last_used_decision: str | None = None
    signed_off_by: str | None = None
    signed_off_at: float | None = None
    sign_off_note: str | None = None
    overrides_approval: bool = False


# What each version of the record encoding hashes: a pinned list, so a column added later
# never changes what an earlier row hashed to.  v1 (the hash chain, before checkpoints):
# every column the baseline had, the chain link included.  v2: the decision itself, no
# ``seq`` (the Merkle tree orders the log) and no link (the tree covers every entry).
_V2_FIELDS = (
    "id", "at", "kind", "agent", "intent", "intent_version", "task_id", "step", "upstream", "tool",
    "arguments_sha256", "arguments", "outcome", "reasons", "policy_input", "policy_result", "policy_revision",
    "intents_revision", "token_jti", "token_expires_at", "masked", "timings_us",
)
_V1_FIELDS = (*_V2_FIELDS, "seq", "prev_hash")
HASH_VERSION = 2


def _canonical(row: dict[str, Any], fields: tuple[str, ...], extra: dict[str, Any]) -> bytes:
    payload = {k: row.get(k) for k in fields}
    payload.update(extra)
    for key in _REAL_COLUMNS:  # REAL columns come back as float whatever went in
        if payload.get(key) is not None:
            payload[key] = float(payload[key])
    # Sorted keys, no whitespace, UTF-8, floats as shortest round-trip repr: the stdlib
    # encoder, not RFC 8785, ten times faster on the hot path and, unlike JCS, it takes any
    # integer an agent may send, so every request can be recorded.
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8")


def chain_hash(row: dict[str, Any]) -> str:
    """v1: SHA-256 over the canonical JSON of the v1 fields (the old hash chain's link)."""
    return sha256_hex(_canonical(row, _V1_FIELDS, {}))


def entry_hash(row: dict[str, Any]) -> str:
    """The hash a row must carry for its ``hash_v``: v2 is its Merkle leaf hash,
    SHA-256(0x00 || canonical JSON of the v2 fields and ``"v": 2``)."""
    version = row.get("hash_v") or 1
    if version == 1:
        return chain_hash(row)
    if version == 2:
        return leaf_hash(_canonical(row, _V2_FIELDS, {"v": 2})).hex()
    raise ValueError(f"unknown record encoding version {version}")


def leaf_of(hash_hex: str, version: int) -> bytes:
    """The Merkle leaf hash of a row: v2 rows carry it; a v1 row's entry is its chain hash."""
    return bytes.fromhex(hash_hex) if version >= 2 else leaf_hash(bytes.fromhex(hash_hex))
