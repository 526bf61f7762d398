"""Reviewer access: who may read decisions and act on them.

Reviewer access is separate from agent access.  A reviewer presents one of:

- an **admin token** minted by ``intentgate admin-token``: an EdDSA JWT signed by the
  gateway's own admin key set (``<data_dir>/keys/admin``, never the agent-issuer or the
  action-token keys), with ``iss``/``aud`` ``intentgate-admin``, header ``typ``
  ``intentgate-admin+jwt`` and ``roles: ["intentgate-reviewer"]``.  No agent verifier trusts
  that issuer, audience or key, and no agent token carries that ``typ``, role or signature;
- an **OIDC token** from an issuer in ``review.issuers`` (its own audience, pinned
  algorithms, JWKS) carrying ``review.role`` in ``review.role_claim``.

Signatures, pinned algorithms, audience, issuer and time claims are checked by the same
:class:`~intentgate.identity.IdentityVerifier` that checks agents.  :meth:`ReviewerAuth.authenticate`
returns a :class:`Reviewer` or raises :class:`ReviewerDenied` with status 401 (no valid reviewer
credential) or 403 (a valid credential that does not grant reviewer access: a workload token
of an agent, or a reviewer token without the role).  The detail goes to the log only.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any, Literal

import jwt
from pydantic import BaseModel, ConfigDict, Field

from ..clock import Clock, SystemClock
from ..config import ReviewConfig
from ..errors import ConfigError, GatewayError, ReasonCode
from ..identity import DEV_ISSUER, IdentityError, IdentityVerifier, IssuerConfig
from ..keys import KeySet

__all__ = [
    "ADMIN_AUDIENCE",
    "ADMIN_ISSUER",
    "ADMIN_ROLE",
    "ADMIN_TYP",
    "AdminTokenIssuer",
    "Reviewer",
    "ReviewerAuth",
    "ReviewerDenied",
]

log = logging.getLogger("intentgate.review")

ADMIN_ISSUER = "intentgate-admin"
ADMIN_AUDIENCE = "intentgate-admin"
ADMIN_TYP = "intentgate-admin+jwt"
ADMIN_ROLE = "intentgate-reviewer"
MAX_ADMIN_TTL = 7 * 86400


class Reviewer(BaseModel):
    """A verified reviewer (never built from a token that did not verify)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="the token's `sub`")
    issuer: str
    via: Literal["admin_token", "oidc", "cli"]


class ReviewerDenied(GatewayError):
    """No reviewer access: ``status`` 401 (no valid reviewer credential) or 403 (not a reviewer)."""

    code = ReasonCode.UNAUTHENTICATED

    def __init__(self, message: str, *, status: Literal[401, 403]) -> None:
        super().__init__(message)
        self.status = status


class AdminTokenIssuer:
    """Mints reviewer admin tokens with the admin key set."""

    def __init__(self, keyset: KeySet, *, clock: Clock | None = None) -> None:
        self.keyset = keyset
        self.clock = clock or SystemClock()

    def mint(self, reviewer: str = "admin", ttl_seconds: int = 8 * 3600) -> str:
        if not reviewer or len(reviewer) > 512:
            raise ConfigError("reviewer name must be 1-512 characters")
        if not 1 <= int(ttl_seconds) <= MAX_ADMIN_TTL:
            raise ConfigError(f"admin token ttl must be between 1 second and {MAX_ADMIN_TTL // 86400} days")
        now = int(self.clock.now())
        claims = {
            "iss": ADMIN_ISSUER, "sub": reviewer, "aud": ADMIN_AUDIENCE, "iat": now, "nbf": now,
            "exp": now + int(ttl_seconds), "jti": secrets.token_urlsafe(12), "roles": [ADMIN_ROLE],
        }
        key = self.keyset.current
        return jwt.encode(claims, key.private, algorithm="EdDSA", headers={"kid": key.kid, "typ": ADMIN_TYP})

    def issuer_config(self) -> IssuerConfig:
        return IssuerConfig(
            kind="oidc", issuer=ADMIN_ISSUER, audience=ADMIN_AUDIENCE, algorithms=["EdDSA"], jwks=self.keyset.jwks()
        )


def roles_of(claims: dict[str, Any], path: str) -> set[str]:
    """Role names at ``path`` (dots walk into objects): a list of strings, or one space-separated string."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return set()
        value = value.get(part)
    if isinstance(value, str):
        return set(value.split())
    if isinstance(value, list):
        return {v for v in value if isinstance(v, str)}
    return set()


class ReviewerAuth:
    """Verify reviewer credentials; tell agents (403) from strangers (401)."""

    def __init__(
        self,
        config: ReviewConfig,
        *,
        admin_keys: KeySet | None,
        agents: IdentityVerifier | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        for cfg in config.issuers:
            if cfg.issuer in (ADMIN_ISSUER, DEV_ISSUER):
                raise ConfigError(f"review.issuers: issuer name {cfg.issuer!r} is reserved for the gateway")
        issuers = list(config.issuers)
        if admin_keys is not None:
            issuers.append(AdminTokenIssuer(admin_keys, clock=self.clock).issuer_config())
        self._reviewers = IdentityVerifier(issuers, clock=self.clock, leeway=config.leeway_seconds)
        self._agents = agents

    def authenticate(self, token: str | None) -> Reviewer:
        if not token:
            raise ReviewerDenied("no reviewer token", status=401)
        try:
            identity = self._reviewers.verify(token)
        except IdentityError as exc:
            if self._is_agent(token):
                log.info("reviewer access refused: an agent's workload token")
                raise ReviewerDenied("an agent token does not grant reviewer access", status=403) from exc
            log.info("reviewer access refused: %s", exc.message)
            raise ReviewerDenied("no valid reviewer token", status=401) from exc
        if identity.issuer == ADMIN_ISSUER:
            # the signature verified, so the header is the one the admin key signed
            if jwt.get_unverified_header(token).get("typ") != ADMIN_TYP:
                log.info("reviewer access refused: admin-issuer token without the admin typ")
                raise ReviewerDenied("not an admin token", status=401)
            if ADMIN_ROLE not in roles_of(identity.claims, "roles"):
                raise ReviewerDenied("admin token without the reviewer role", status=403)
            return Reviewer(id=identity.id, issuer=identity.issuer, via="admin_token")
        if self.config.role not in roles_of(identity.claims, self.config.role_claim):
            log.info("reviewer access refused: %s has no role %r", identity.id, self.config.role)
            raise ReviewerDenied("the token does not carry the reviewer role", status=403)
        return Reviewer(id=identity.id, issuer=identity.issuer, via="oidc")

    def _is_agent(self, token: str) -> bool:
        if self._agents is None:
            return False
        try:
            self._agents.verify(token)
        except IdentityError:
            return False
        return True
