"""Records exchanged with the store (the table models never leave the store unfiltered)."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..canonical import sha256_hex

__all__ = [
    "GENESIS_HASH",
    "ApprovalRecord",
    "ChainReport",
    "DecisionRecord",
    "GrantRecord",
    "Outcome",
    "TokenRecord",
    "chain_hash",
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


class ChainReport(BaseModel):
    """Result of ``audit verify``."""

    ok: bool
    checked: int
    head_seq: int
    problems: list[str]


def chain_hash(row: dict[str, Any]) -> str:
    """Hash of a decision row: SHA-256 over a canonical JSON of every column but ``hash``.

    Sorted keys, no whitespace, UTF-8, floats as shortest round-trip repr.  (The stdlib
    encoder, not RFC 8785: it is ten times faster on the hot path and, unlike JCS, takes
    any integer an agent may send, so every request can be recorded.)
    """
    payload = {k: v for k, v in row.items() if k != "hash"}
    for key in _REAL_COLUMNS:  # REAL columns come back as float whatever went in
        if payload.get(key) is not None:
            payload[key] = float(payload[key])
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return sha256_hex(text.encode("utf-8"))
