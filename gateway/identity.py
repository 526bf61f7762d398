"""Agent identity: who is calling.  The agent id is the workload token's ``sub``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["AgentIdentity"]


class AgentIdentity(BaseModel):
    """A verified workload identity (never built from untrusted input without verification)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=512)
    issuer: str = ""
    claims: dict[str, Any] = Field(default_factory=dict)
