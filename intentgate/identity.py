"""Agent identity: who is calling.  The agent id is the workload token's ``sub``.

An agent proves its identity with a JWT from a trusted issuer: a SPIFFE JWT-SVID, an OIDC
workload token, or the gateway's own development issuer (``intentgate agent-token``).
Each trusted issuer is configured with its ``iss``, the audience the gateway expects, the
algorithms it may use (pinned) and its keys (a JWKS file, or inline).  Verification returns
an :class:`AgentIdentity` or raises :class:`IdentityError`; callers facing the agent answer
with one opaque ``unauthenticated`` and keep the detail for the audit log.
"""

from __future__ import annotations

import json
import re
import secrets
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal

import jwt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .clock import Clock, SystemClock
from .errors import ConfigError, GatewayError, ReasonCode
from .keys import KeySet
from .names import spiffe_id_problem

__all__ = [
    "DEV_AUDIENCE",
    "DEV_ISSUER",
    "AgentIdentity",
    "DevIssuer",
    "IdentityError",
    "IdentityVerifier",
    "IssuerConfig",
]

DEV_ISSUER = "intentgate-dev"
DEV_AUDIENCE = "intentgate"
_SPIFFE_ID = re.compile(r"^spiffe://(?P<td>[a-z0-9._-]+)(?P<path>(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)+)$")
_MAX_DATE = 2**53  # seconds: any time claim beyond (or NaN) is refused
_ASYMMETRIC = {"EdDSA", "ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}


class AgentIdentity(BaseModel):
    """A verified workload identity (never built from untrusted input without verification)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=512)
    issuer: str = ""
    claims: dict[str, Any] = Field(default_factory=dict)


class IdentityError(GatewayError):
    """The caller's workload token was missing or did not verify."""

    code = ReasonCode.UNAUTHENTICATED


class IssuerConfig(BaseModel):
    """One trusted issuer of workload tokens."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["spiffe", "oidc"]
    issuer: str = Field(description="exact `iss` claim")
    audience: str = Field(description="audience the gateway requires in `aud`")
    algorithms: list[str] = Field(default_factory=lambda: ["ES256", "RS256", "EdDSA"], min_length=1)
    jwks_file: Path | None = None
    jwks: dict[str, Any] | None = Field(default=None, description="inline JWKS")
    trust_domain: str | None = Field(default=None, description="spiffe: the only trust domain accepted")

    @model_validator(mode="after")
    def _check(self) -> IssuerConfig:
        bad = [a for a in self.algorithms if a not in _ASYMMETRIC]
        if bad:
            raise ValueError(f"algorithms {bad} are not allowed (asymmetric algorithms only)")
        if (self.jwks_file is None) == (self.jwks is None):
            raise ValueError("give exactly one of jwks_file or jwks")
        if self.kind == "spiffe" and not self.trust_domain:
            raise ValueError("a spiffe issuer needs trust_domain")
        return self


class _TrustedIssuer:
    def __init__(self, config: IssuerConfig) -> None:
        self.config = config
        try:
            document = self.config.jwks if self.config.jwks is not None else json.loads(
                Path(self.config.jwks_file).read_text(encoding="utf-8")  # type: ignore[arg-type]
            )
            self.keys = jwt.PyJWKSet.from_dict(document)
        except (OSError, ValueError, jwt.PyJWTError) as exc:
            raise ConfigError(f"issuer {config.issuer!r}: cannot load its JWKS: {exc}") from exc

    def key_for(self, kid: Any) -> jwt.PyJWK | None:
        if not isinstance(kid, str):
            return None
        for key in self.keys.keys:
            if key.key_id == kid:
                return key
        return None


class DevIssuer:
    """The gateway's own issuer of agent tokens, for development and the demo."""

    def __init__(self, keyset: KeySet, *, clock: Clock | None = None) -> None:
        self.keyset = keyset
        self.clock = clock or SystemClock()

    def mint(self, agent_id: str, ttl_seconds: int = 3600, *, audience: str = DEV_AUDIENCE) -> str:
        if not agent_id or len(agent_id) > 512:
            raise ConfigError("agent id must be 1-512 characters")
        now = int(self.clock.now())
        claims = {
            "iss": DEV_ISSUER, "sub": agent_id, "aud": audience, "iat": now, "nbf": now,
            "exp": now + int(ttl_seconds), "jti": secrets.token_urlsafe(12),
        }
        key = self.keyset.current
        return jwt.encode(claims, key.private, algorithm="EdDSA", headers={"kid": key.kid, "typ": "JWT"})

    def issuer_config(self) -> IssuerConfig:
        return IssuerConfig(
            kind="oidc", issuer=DEV_ISSUER, audience=DEV_AUDIENCE, algorithms=["EdDSA"], jwks=self.keyset.jwks()
        )


class IdentityVerifier:
    """Verify workload tokens against the trusted issuers."""

    def __init__(
        self, issuers: list[IssuerConfig], *, clock: Clock | None = None, leeway: float = 30.0, cache_size: int = 4096
    ) -> None:
        self._issuers = {c.issuer: _TrustedIssuer(c) for c in issuers}
        self.clock = clock or SystemClock()
        self.leeway = leeway
        # token -> identity, for tokens that verified: an HTTP agent sends the same token on
        # every request, and a signature check costs more than the rest of the request's auth
        self._cache: OrderedDict[str, AgentIdentity] = OrderedDict()
        self._cache_size = cache_size

    def verify(self, token: str | None) -> AgentIdentity:
        if not isinstance(token, str):  # a boundary: whatever arrives is refused, never a TypeError
            raise IdentityError("no workload token")
        if (hit := self._cache.get(token)) is not None:
            if self.clock.now() < hit.claims["exp"] + self.leeway:
                self._cache.move_to_end(token)
                return hit
            del self._cache[token]
        try:
            identity = self._verify(token)
        except IdentityError:
            raise
        except Exception as exc:  # noqa: BLE001 - anything odd about a token is a failed login
            raise IdentityError(f"malformed workload token ({type(exc).__name__})") from exc
        if self._cache_size:
            self._cache[token] = identity
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return identity

    def _verify(self, token: str | None) -> AgentIdentity:
        if not token or not isinstance(token, str) or len(token) > 16384:
            raise IdentityError("no workload token")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise IdentityError(f"not a JWT: {exc}") from exc
        trusted = self._issuers.get(unverified.get("iss")) if isinstance(unverified.get("iss"), str) else None
        if trusted is None:
            raise IdentityError(f"untrusted issuer {unverified.get('iss')!r}")
        cfg = trusted.config
        alg = header.get("alg")
        if alg not in cfg.algorithms:
            raise IdentityError(f"algorithm {alg!r} not allowed for issuer {cfg.issuer!r}")
        key = trusted.key_for(header.get("kid"))
        if key is None:
            raise IdentityError(f"unknown key id {header.get('kid')!r} for issuer {cfg.issuer!r}")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=cfg.audience,
                issuer=cfg.issuer,
                options={"require": ["exp", "iat", "sub", "aud", "iss"], "verify_exp": False,
                         "verify_nbf": False, "verify_iat": False},
            )
        except jwt.PyJWTError as exc:
            raise IdentityError(f"workload token rejected: {type(exc).__name__}: {exc}") from exc
        now = self.clock.now()
        for name in ("exp", "iat", "nbf"):
            value = claims.get(name, 0)
            # NaN and Infinity (which JSON parsers accept) would never expire; nor would a huge integer
            if isinstance(value, bool) or not isinstance(value, int | float) or not -_MAX_DATE <= value <= _MAX_DATE:
                raise IdentityError(f"claim {name} is not a number of seconds")
        if now >= claims["exp"] + self.leeway:
            raise IdentityError("workload token expired")
        if now + self.leeway < claims.get("nbf", claims["iat"]):
            raise IdentityError("workload token not valid yet")
        sub = claims["sub"]
        if not isinstance(sub, str) or not sub or len(sub) > 512:
            raise IdentityError("workload token has no usable subject")
        if (cfg.kind == "spiffe" or sub.startswith("spiffe:")) and (problem := spiffe_id_problem(sub)):
            raise IdentityError(f"subject {sub[:200]!r} is not a valid SPIFFE ID: {problem}")
        if cfg.kind == "spiffe":
            m = _SPIFFE_ID.match(sub)
            if not m or m["td"] != cfg.trust_domain:
                raise IdentityError(f"subject {sub!r} is not a SPIFFE ID in trust domain {cfg.trust_domain!r}")
        return AgentIdentity(id=sub, issuer=cfg.issuer, claims=claims)
