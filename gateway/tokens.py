"""Action tokens: one EdDSA JWT per allowed call, bound to that call.

Shape (RFC 9068 access token, RFC 9396 authorization details)::

    header  {"alg": "EdDSA", "typ": "at+jwt", "kid": "<RFC 7638 thumbprint>"}
    claims  {"iss", "sub": agent, "client_id": agent, "aud": upstream, "iat", "nbf", "exp", "jti",
             "authorization_details": [{"type": "mcp_tool_call", "tool": "upstream.tool",
                                        "arguments_sha256", "task", "intent", "step"}]}

``exp`` is ``iat + ttl`` (default 30 s) but never later than the task's expiry.
"""

from __future__ import annotations

import math
import secrets
from typing import Any

import jwt
from pydantic import BaseModel, ConfigDict

from .clock import Clock, SystemClock
from .errors import ReasonCode, TokenError
from .keys import KeySet

__all__ = ["AUTHZ_TYPE", "TOKEN_TYP", "ActionTokenIssuer", "MintedToken"]

AUTHZ_TYPE = "mcp_tool_call"
TOKEN_TYP = "at+jwt"


class MintedToken(BaseModel):
    """A freshly minted token.  ``token`` is a bearer secret: never log it."""

    model_config = ConfigDict(frozen=True)

    token: str
    jti: str
    issued_at: int
    expires_at: int
    claims: dict[str, Any]

    def __repr__(self) -> str:  # keep the secret out of reprs and tracebacks
        return f"MintedToken(jti={self.jti!r}, expires_at={self.expires_at})"

    __str__ = __repr__


class ActionTokenIssuer:
    """Mints action tokens with the key set's current key."""

    def __init__(
        self, keyset: KeySet, *, issuer: str = "intentgate", clock: Clock | None = None, default_ttl: int = 30
    ) -> None:
        self.keyset = keyset
        self.issuer = issuer
        self.clock = clock or SystemClock()
        self.default_ttl = default_ttl

    def mint(
        self,
        *,
        agent: str,
        task_id: str,
        intent: str,
        step: str,
        upstream: str,
        tool: str,
        arguments_sha256: str,
        task_expires_at: float,
        ttl_seconds: int | None = None,
    ) -> MintedToken:
        now = int(self.clock.now())
        ttl = self.default_ttl if ttl_seconds is None else int(ttl_seconds)
        exp = min(now + ttl, math.floor(task_expires_at))
        if ttl <= 0 or exp <= now:
            raise TokenError("refusing to mint a token that would outlive its task", code=ReasonCode.TASK_EXPIRED)
        jti = secrets.token_urlsafe(18)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": agent,
            "client_id": agent,
            "aud": upstream,
            "iat": now,
            "nbf": now,
            "exp": exp,
            "jti": jti,
            "authorization_details": [
                {
                    "type": AUTHZ_TYPE,
                    "tool": tool,
                    "arguments_sha256": arguments_sha256,
                    "task": task_id,
                    "intent": intent,
                    "step": step,
                }
            ],
        }
        key = self.keyset.current
        token = jwt.encode(claims, key.private, algorithm="EdDSA", headers={"kid": key.kid, "typ": TOKEN_TYP})
        return MintedToken(token=token, jti=jti, issued_at=now, expires_at=exp, claims=claims)
