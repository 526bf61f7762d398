"""Verifying action tokens: for the gateway, and for tool servers that trust nothing else.

``ActionTokenVerifier.verify`` checks, in order: the token's form; the header (``alg``
pinned to EdDSA, ``typ`` ``at+jwt``, a ``kid`` that names a trusted key); the signature,
required claims, issuer and audience (pyjwt); the shape of the claims; ``exp``/``nbf``/``iat``
against an injectable clock with leeway; and the single ``mcp_tool_call`` authorization
detail (the tool, and the SHA-256 of the canonical arguments actually received).
``verify_and_consume`` then burns the ``jti`` in a :class:`JtiLedger`, so a token works once.

Every refusal is a ``TokenError`` whatever the input, with a specific code for the audit log;
callers facing an agent show only ``invalid_token``.  This module imports nothing from the
gateway's serving side, so a tool server can use it with just the gateway's JWKS::

    verifier = ActionTokenVerifier(PublicKeySet.from_file("jwks.json"))
    ledger = SqliteJtiLedger("var/jti.db")
    claims = await verifier.verify_and_consume(
        token, tool="payments.refund", arguments=arguments, audience="payments", ledger=ledger
    )
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import re
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

import jwt
from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, ValidationError

from .canonical import arguments_sha256
from .clock import Clock, SystemClock
from .errors import ReasonCode, StoreError, TokenError
from .keys import VerificationKeys

__all__ = [
    "ActionClaims",
    "ActionTokenVerifier",
    "AuthorizationDetail",
    "ConsumeOutcome",
    "JtiLedger",
    "SqliteJtiLedger",
]

log = logging.getLogger(__name__)

MAX_TOKEN_CHARS = 8192
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_DECODE_OPTIONS: jwt.types.Options = {
    "require": ["exp", "iat", "nbf", "sub", "aud", "iss", "jti"],
    "verify_exp": False,  # the time claims are checked against the injected clock instead
    "verify_nbf": False,
    "verify_iat": False,
    "strict_aud": True,  # aud must be exactly one string, the upstream's name
}


class ConsumeOutcome(Enum):
    """What a ledger says when asked to burn a ``jti``."""

    CONSUMED = "consumed"  # first use: go ahead
    REPLAYED = "replayed"  # used before
    REVOKED = "revoked"  # the gateway revoked it (its task ended, failed or expired)
    UNKNOWN = "unknown"  # the ledger never issued it (only ledgers that record issuance say this)


class JtiLedger(Protocol):
    """Where token ids are burnt.  ``consume`` must be atomic across concurrent callers."""

    async def consume(self, jti: str, *, expires_at: float, now: float) -> ConsumeOutcome: ...


NumericDate = Annotated[int | FiniteFloat, Field(ge=0)]


class AuthorizationDetail(BaseModel):
    """The RFC 9396 ``authorization_details`` entry of an action token."""

    model_config = ConfigDict(strict=True, frozen=True, extra="allow")

    type: Literal["mcp_tool_call"]
    tool: str = Field(min_length=3)
    arguments_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    task: str = Field(min_length=1)
    intent: str = Field(min_length=1)
    step: str = Field(min_length=1)


class ActionClaims(BaseModel):
    """The verified claims of an action token."""

    model_config = ConfigDict(strict=True, frozen=True, extra="allow")

    iss: str
    sub: str = Field(min_length=1)
    aud: str
    iat: NumericDate
    nbf: NumericDate
    exp: NumericDate
    jti: str = Field(min_length=16, max_length=64)
    client_id: str | None = None
    authorization_details: list[AuthorizationDetail] = Field(min_length=1, max_length=1)

    @property
    def detail(self) -> AuthorizationDetail:
        return self.authorization_details[0]


def _invalid(message: str) -> TokenError:
    return TokenError(message, code=ReasonCode.INVALID_TOKEN)


def _unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header, read only to choose the key; pyjwt reads it again under the signature."""
    segment = token.partition(".")[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, RecursionError) as exc:  # binascii, UTF-8 and JSON errors are ValueErrors
        raise _invalid("unreadable header") from exc
    if not isinstance(header, dict):
        raise _invalid("header is not a JSON object")
    return header


class ActionTokenVerifier:
    """Verify action tokens against the gateway's public keys (a JWKS or the gateway's key set)."""

    def __init__(
        self,
        keys: VerificationKeys,
        *,
        issuer: str = "intentgate",
        clock: Clock | None = None,
        leeway: float = 5.0,
    ) -> None:
        if leeway < 0:
            raise ValueError("leeway must not be negative")
        self.keys = keys
        self.issuer = issuer
        self.clock = clock or SystemClock()
        self.leeway = leeway

    def verify(self, token: str, *, tool: str, arguments: dict[str, Any], audience: str) -> ActionClaims:
        """Check ``token`` for exactly this call; raise ``TokenError`` with the reason otherwise."""
        try:
            return self._verify(token, tool=tool, arguments=arguments, audience=audience)
        except TokenError:
            raise
        except Exception as exc:  # noqa: BLE001 - fail closed on anything not foreseen below
            raise _invalid(f"unexpected {type(exc).__name__} while verifying") from exc

    def _verify(self, token: str, *, tool: str, arguments: dict[str, Any], audience: str) -> ActionClaims:
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or not _COMPACT_JWS.fullmatch(token):
            raise _invalid("not a compact JWS")
        header = _unverified_header(token)
        if header.get("alg") != "EdDSA":
            raise _invalid(f"algorithm {str(header.get('alg'))[:20]!r} is not accepted")
        if header.get("typ") != "at+jwt":
            raise _invalid(f"typ {str(header.get('typ'))[:20]!r} is not at+jwt")
        kid = header.get("kid")
        key = self.keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise _invalid(f"unknown key id {str(kid)[:64]!r}")
        try:
            decoded = jwt.decode_complete(
                token, key, algorithms=["EdDSA"], audience=audience, issuer=self.issuer, options=_DECODE_OPTIONS
            )
        except jwt.InvalidAudienceError as exc:
            raise TokenError(f"token is not for {audience!r}", code=ReasonCode.TOKEN_AUDIENCE) from exc
        except jwt.InvalidTokenError as exc:
            raise _invalid(f"{type(exc).__name__}: {exc}") from exc
        if decoded["header"] != header:  # the same bytes, so never; but only the signed one counts
            raise _invalid("header differs from the signed header")
        return self._check_claims(decoded["payload"], tool=tool, arguments=arguments)

    def check_minted(self, claims: dict[str, Any], *, tool: str, arguments: dict[str, Any],
                     audience: str) -> ActionClaims:
        """Check a token this process has just minted (its ``MintedToken.claims``) for exactly
        this call, without verifying its signature again: the same claim checks as ``verify``
        (audience, lifetime, tool, and the digest of the arguments about to be sent), so that
        what goes upstream is what the token binds.  Raises ``TokenError`` otherwise."""
        try:
            if claims.get("aud") != audience:
                raise TokenError(f"token is not for {audience!r}", code=ReasonCode.TOKEN_AUDIENCE)
            return self._check_claims(claims, tool=tool, arguments=arguments)
        except TokenError:
            raise
        except Exception as exc:  # noqa: BLE001 - fail closed on anything not foreseen
            raise _invalid(f"unexpected {type(exc).__name__} while checking") from exc

    def _check_claims(self, payload: Any, *, tool: str, arguments: dict[str, Any]) -> ActionClaims:
        try:
            claims = ActionClaims.model_validate(payload)
        except ValidationError as exc:
            fields = sorted({".".join(map(str, e["loc"])) for e in exc.errors(include_input=False)})
            raise _invalid(f"claims do not have the action-token shape: {', '.join(fields)}") from exc

        now = self.clock.now()
        if now - self.leeway >= claims.exp:
            raise TokenError("token expired", code=ReasonCode.TOKEN_EXPIRED)
        if claims.nbf > now + self.leeway or claims.iat > now + self.leeway:
            raise TokenError("token not valid yet", code=ReasonCode.TOKEN_NOT_YET_VALID)

        detail = claims.detail
        if detail.tool != tool:
            raise TokenError(f"token is for tool {detail.tool!r}, not {tool!r}", code=ReasonCode.TOKEN_TOOL)
        try:
            digest = arguments_sha256(arguments)
        except Exception as exc:  # noqa: BLE001 - NaN, huge integers, non-JSON types: cannot match
            raise TokenError("arguments cannot be canonicalised", code=ReasonCode.TOKEN_ARGUMENTS) from exc
        if not hmac.compare_digest(digest, detail.arguments_sha256):
            raise TokenError("arguments differ from those the token was minted for", code=ReasonCode.TOKEN_ARGUMENTS)
        return claims

    async def verify_and_consume(
        self, token: str, *, tool: str, arguments: dict[str, Any], audience: str, ledger: JtiLedger
    ) -> ActionClaims:
        """Verify, then burn the ``jti``: a second use raises ``TokenError`` (``token_replayed``).

        Ledger failures (database down) propagate as the ledger's own errors, never as a pass.
        """
        claims = self.verify(token, tool=tool, arguments=arguments, audience=audience)
        outcome = await ledger.consume(claims.jti, expires_at=float(claims.exp), now=self.clock.now())
        if outcome is ConsumeOutcome.CONSUMED:
            return claims
        if outcome is ConsumeOutcome.REPLAYED:
            raise TokenError(f"token {claims.jti} was already used", code=ReasonCode.TOKEN_REPLAYED)
        if outcome is ConsumeOutcome.REVOKED:
            raise TokenError(f"token {claims.jti} was revoked", code=ReasonCode.TOKEN_REVOKED)
        raise _invalid(f"token {claims.jti} is unknown to the ledger")


class SqliteJtiLedger:
    """A tool server's own replay ledger: one SQLite file, one INSERT per consumption.

    A primary-key conflict means the ``jti`` was seen before; SQLite makes that atomic across
    threads and processes sharing the file.  The blocking work runs on one worker thread, off
    the event loop.  Rows are purged (at most once a minute) an hour after their token
    expired, long after the verifier refuses the token as expired anyway.
    """

    PURGE_AFTER = 3600.0
    PURGE_EVERY = 60.0

    def __init__(self, path: Path | str, *, timeout: float = 5.0) -> None:
        self.path = str(path)
        self.timeout = timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jti-ledger")
        self._conn: sqlite3.Connection | None = None
        self._last_purge = float("-inf")
        self._closed = False

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=self.timeout)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS seen_jti (jti TEXT PRIMARY KEY, expires_at REAL NOT NULL) WITHOUT ROWID"
                )
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _consume(self, jti: str, expires_at: float, now: float) -> ConsumeOutcome:
        try:
            db = self._db()
            db.execute("INSERT INTO seen_jti (jti, expires_at) VALUES (?, ?)", (jti, expires_at))
        except sqlite3.IntegrityError:
            return ConsumeOutcome.REPLAYED
        except sqlite3.Error as exc:
            raise StoreError(f"jti ledger {self.path}: {exc}") from exc
        if now - self._last_purge >= self.PURGE_EVERY:
            self._last_purge = now
            try:
                db.execute("DELETE FROM seen_jti WHERE expires_at < ?", (now - self.PURGE_AFTER,))
            except sqlite3.Error as exc:  # the jti is burnt; the purge is retried next time
                log.warning("jti ledger purge failed", extra={"path": self.path, "error": str(exc)})
        return ConsumeOutcome.CONSUMED

    async def consume(self, jti: str, *, expires_at: float, now: float) -> ConsumeOutcome:
        if self._closed:
            raise StoreError(f"jti ledger {self.path} is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._consume, jti, expires_at, now)

    def _close_conn(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        """Close the database on its own thread, then stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._executor.submit(self._close_conn).result()
        self._executor.shutdown(wait=True)
