"""Verifying action tokens: for the gateway, and for tool servers that trust nothing else.

``ActionTokenVerifier.verify`` checks, in order: the header (``alg`` pinned to EdDSA, ``typ``
``at+jwt``, a known ``kid``), the signature, required claims, issuer, audience, the time
claims against an injectable clock with leeway, and the single ``mcp_tool_call``
authorization detail (tool, and the SHA-256 of the arguments actually received).
``verify_and_consume`` then burns the ``jti`` in a :class:`JtiLedger`, so a token works once.

Failures raise ``TokenError`` with a specific code for logs; callers facing an agent should
show only ``invalid_token``.  This module imports nothing from the gateway's serving side, so
a tool server can use it with just the gateway's JWKS.
"""

from __future__ import annotations

import asyncio
import hmac
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

import jwt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .canonical import arguments_sha256
from .clock import Clock, SystemClock
from .errors import ReasonCode, TokenError
from .keys import KeySet, PublicKeySet

__all__ = [
    "ActionClaims",
    "ActionTokenVerifier",
    "AuthorizationDetail",
    "ConsumeOutcome",
    "JtiLedger",
    "SqliteJtiLedger",
]

_REQUIRED = ["exp", "iat", "nbf", "sub", "aud", "iss", "jti"]


class ConsumeOutcome(Enum):
    CONSUMED = "consumed"
    REPLAYED = "replayed"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


class JtiLedger(Protocol):
    """Where token ids are burnt.  ``consume`` must be atomic across concurrent callers."""

    async def consume(self, jti: str, *, expires_at: float, now: float) -> ConsumeOutcome: ...


class AuthorizationDetail(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    type: str
    tool: str
    arguments_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    task: str
    intent: str
    step: str


class ActionClaims(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    iss: str
    sub: str
    aud: str | list[str]
    iat: int | float
    nbf: int | float
    exp: int | float
    jti: str = Field(min_length=16, max_length=64)
    client_id: str | None = None
    authorization_details: list[AuthorizationDetail] = Field(min_length=1, max_length=1)

    @property
    def detail(self) -> AuthorizationDetail:
        return self.authorization_details[0]


def _fail(code: ReasonCode, message: str) -> TokenError:
    return TokenError(message, code=code)


class ActionTokenVerifier:
    """Verify action tokens against the gateway's public keys."""

    def __init__(
        self,
        keys: PublicKeySet | KeySet,
        *,
        issuer: str = "intentgate",
        clock: Clock | None = None,
        leeway: float = 5.0,
    ) -> None:
        self.keys = keys
        self.issuer = issuer
        self.clock = clock or SystemClock()
        self.leeway = leeway

    def verify(self, token: str, *, tool: str, arguments: dict[str, Any], audience: str) -> ActionClaims:
        try:
            return self._verify(token, tool=tool, arguments=arguments, audience=audience)
        except TokenError:
            raise
        except Exception as exc:  # noqa: BLE001 - any parsing failure is an invalid token
            raise _fail(ReasonCode.INVALID_TOKEN, f"malformed token ({type(exc).__name__})") from exc

    def _verify(self, token: str, *, tool: str, arguments: dict[str, Any], audience: str) -> ActionClaims:
        if not isinstance(token, str) or not token or len(token) > 16384:
            raise _fail(ReasonCode.INVALID_TOKEN, "not a token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise _fail(ReasonCode.INVALID_TOKEN, f"bad header: {exc}") from exc
        if header.get("alg") != "EdDSA":
            raise _fail(ReasonCode.INVALID_TOKEN, f"algorithm {header.get('alg')!r} is not accepted")
        if header.get("typ") != "at+jwt":
            raise _fail(ReasonCode.INVALID_TOKEN, f"typ {header.get('typ')!r} is not at+jwt")
        kid = header.get("kid")
        key = self.keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise _fail(ReasonCode.INVALID_TOKEN, f"unknown key id {kid!r}")
        try:
            raw = jwt.decode(
                token,
                key,
                algorithms=["EdDSA"],
                audience=audience,
                issuer=self.issuer,
                options={
                    "require": _REQUIRED,
                    "verify_exp": False,  # checked below against the injected clock
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidAudienceError as exc:
            raise _fail(ReasonCode.TOKEN_AUDIENCE, f"token is not for {audience!r}") from exc
        except jwt.InvalidTokenError as exc:
            raise _fail(ReasonCode.INVALID_TOKEN, f"{type(exc).__name__}: {exc}") from exc
        try:
            claims = ActionClaims.model_validate(raw)
        except ValidationError as exc:
            raise _fail(ReasonCode.INVALID_TOKEN, "claims do not have the action-token shape") from exc
        for name in ("iat", "nbf", "exp"):
            if isinstance(raw[name], bool):
                raise _fail(ReasonCode.INVALID_TOKEN, f"claim {name} is not a number")

        now = self.clock.now()
        if now >= claims.exp + self.leeway:
            raise _fail(ReasonCode.TOKEN_EXPIRED, "token expired")
        if now + self.leeway < claims.nbf or now + self.leeway < claims.iat:
            raise _fail(ReasonCode.TOKEN_NOT_YET_VALID, "token not valid yet")

        detail = claims.detail
        if detail.type != "mcp_tool_call":
            raise _fail(ReasonCode.INVALID_TOKEN, f"authorization_details type {detail.type!r}")
        if detail.tool != tool:
            raise _fail(ReasonCode.TOKEN_TOOL, f"token is for tool {detail.tool!r}, not {tool!r}")
        try:
            digest = arguments_sha256(arguments)
        except Exception as exc:  # noqa: BLE001 - arguments that cannot be canonicalised
            raise _fail(ReasonCode.TOKEN_ARGUMENTS, "arguments cannot be canonicalised") from exc
        if not hmac.compare_digest(digest, detail.arguments_sha256):
            raise _fail(ReasonCode.TOKEN_ARGUMENTS, "arguments differ from the ones the token was minted for")
        return claims

    async def verify_and_consume(
        self, token: str, *, tool: str, arguments: dict[str, Any], audience: str, ledger: JtiLedger
    ) -> ActionClaims:
        claims = self.verify(token, tool=tool, arguments=arguments, audience=audience)
        outcome = await ledger.consume(claims.jti, expires_at=float(claims.exp), now=self.clock.now())
        if outcome is ConsumeOutcome.CONSUMED:
            return claims
        if outcome is ConsumeOutcome.REPLAYED:
            raise _fail(ReasonCode.TOKEN_REPLAYED, f"token {claims.jti} was already used")
        if outcome is ConsumeOutcome.REVOKED:
            raise _fail(ReasonCode.TOKEN_REVOKED, f"token {claims.jti} was revoked")
        raise _fail(ReasonCode.INVALID_TOKEN, f"token {claims.jti} was never issued")


class SqliteJtiLedger:
    """A tool server's own replay ledger: one SQLite file, one INSERT per consumption.

    A primary-key conflict means the jti was seen before.  Rows are purged an hour after
    the token expired, long after the verifier would reject the token as expired anyway.
    """

    PURGE_AFTER = 3600.0

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jti-ledger")
        self._conn: sqlite3.Connection | None = None
        self._inserts = 0

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("CREATE TABLE IF NOT EXISTS seen_jti (jti TEXT PRIMARY KEY, expires_at REAL NOT NULL)")
            self._conn = conn
        return self._conn

    def _consume(self, jti: str, expires_at: float, now: float) -> ConsumeOutcome:
        db = self._db()
        try:
            db.execute("INSERT INTO seen_jti (jti, expires_at) VALUES (?, ?)", (jti, expires_at))
        except sqlite3.IntegrityError:
            return ConsumeOutcome.REPLAYED
        self._inserts += 1
        if self._inserts % 1000 == 0:
            db.execute("DELETE FROM seen_jti WHERE expires_at < ?", (now - self.PURGE_AFTER,))
        return ConsumeOutcome.CONSUMED

    async def consume(self, jti: str, *, expires_at: float, now: float) -> ConsumeOutcome:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._consume, jti, expires_at, now)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        if self._conn is not None:
            self._conn.close()
            self._conn = None
