"""Action tokens: one EdDSA JWT per allowed call, bound to that call.

Shape (RFC 9068 access token, RFC 9396 authorization details)::

    header  {"alg": "EdDSA", "typ": "at+jwt", "kid": "<RFC 7638 thumbprint>"}
    claims  {"iss", "sub": agent, "client_id": agent, "aud": upstream, "iat", "nbf", "exp", "jti",
             "authorization_details": [{"type": "mcp_tool_call", "tool": "upstream.tool",
                                        "arguments_sha256", "task", "intent", "step"}]}

``exp`` is ``iat + ttl`` (default 30 s) but never later than the task's expiry; a token that
would have no lifetime left is refused rather than minted.

Minting is on the hot path of every allowed call: pyjwt signs with the already-loaded key
object (about 60 µs here), and :mod:`intentgate.verify` reads every token back with pyjwt.
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
JTI_BYTES = 18  # 144 random bits, 24 url-safe characters

class MintedToken(BaseModel):
    """A freshly minted token.  ``token`` is a bearer secret: never log it (the repr omits it)."""

    model_config = ConfigDict(frozen=True)

    token: str
    jti: str
    issued_at: int
    expires_at: int
    claims: dict[str, Any]

    def __repr__(self) -> str:
        return f"MintedToken(jti={self.jti!r}, issued_at={self.issued_at}, expires_at={self.expires_at})"

    __str__ = __repr__


class ActionTokenIssuer:
    """Mints action tokens with the key set's current key."""

    def __init__(
        self, keyset: KeySet, *, issuer: str = "intentgate", clock: Clock | None = None, default_ttl: int = 30
    ) -> None:
        if default_ttl < 1:
            raise ValueError("default_ttl must be at least one second")
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
        """Mint the token for one allowed call.

        ``tool`` is the qualified name ``<upstream>.<tool>``; ``arguments_sha256`` the hex
        digest of the canonical arguments (:func:`intentgate.canonical.arguments_sha256`).
        Raises ``TokenError`` (``task_expired``) if the task leaves the token no lifetime.
        """
        if not tool.startswith(f"{upstream}.") or len(tool) <= len(upstream) + 1:
            raise ValueError(f"tool {tool!r} is not a tool of upstream {upstream!r}")
        ttl = self.default_ttl if ttl_seconds is None else ttl_seconds
        if ttl < 1:
            raise ValueError("ttl_seconds must be at least one second")
        now = int(self.clock.now())
        exp = min(now + ttl, math.floor(task_expires_at))
        if exp <= now:
            raise TokenError("refusing to mint a token that would outlive its task", code=ReasonCode.TASK_EXPIRED)
        jti = secrets.token_urlsafe(JTI_BYTES)
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
