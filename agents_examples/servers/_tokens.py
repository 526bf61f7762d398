"""The action-token check of servers that trust nothing but IntentGate (payments).

Every call must carry a token in ``_meta["intentgate/token"]``; :class:`TokenGuard` verifies
it with :mod:`intentgate.verify` for this upstream (audience), this tool and the arguments
actually received, then burns its ``jti`` in ``<name>-jti.db`` in the data dir.  The
gateway's public keys come from ``INTENTGATE_JWKS``: a JWKS file, or the gateway's
``http(s)://.../.well-known/jwks.json``; either is re-read when a token names a key id not
seen yet, so a key rotation at the gateway needs no restart here.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx2
import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from intentgate.errors import ConfigError, ReasonCode, StoreError, TokenError
from intentgate.keys import PublicKeySet
from intentgate.verify import ActionClaims, ActionTokenVerifier, SqliteJtiLedger

from ._common import Refused

__all__ = ["JWKS_ENV", "TOKEN_META_KEY", "ConfigError", "GatewayKeys", "TokenGuard"]

log = logging.getLogger("agents_examples.servers")

TOKEN_META_KEY = "intentgate/token"
JWKS_ENV = "INTENTGATE_JWKS"


def _kid_of(token: str) -> str | None:
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.InvalidTokenError:
        return None
    return kid if isinstance(kid, str) else None


class GatewayKeys:
    """The gateway's public keys from a JWKS file or URL; re-read when a token names a new kid.

    Re-reads for unknown key ids happen at most once per ``refetch_every`` seconds (the first
    load does not count), so made-up key ids cannot turn this server into a load generator
    against the gateway.
    """

    def __init__(self, source: str, *, timeout: float = 5.0, refetch_every: float = 10.0) -> None:
        self.source = source
        self.timeout = timeout
        self.refetch_every = refetch_every
        self._keys = PublicKeySet({})
        self._last_refetch = -math.inf
        self._lock = anyio.Lock()

    @property
    def is_url(self) -> bool:
        return self.source.startswith(("http://", "https://"))

    def get(self, kid: str) -> Ed25519PublicKey | None:
        return self._keys.get(kid)

    async def load(self) -> None:
        """Read the JWKS now; ``ConfigError`` if it cannot be read or is not a valid JWKS."""
        if not self.is_url:
            self._keys = await anyio.to_thread.run_sync(PublicKeySet.from_file, self.source)
            return
        try:
            async with httpx2.AsyncClient(timeout=self.timeout) as client:
                response = await client.get(self.source, headers={"Accept": "application/json"})
                response.raise_for_status()
                document = response.json()
        except (httpx2.HTTPError, ValueError) as exc:
            raise ConfigError(f"{self.source}: cannot fetch JWKS: {exc}") from exc
        self._keys = PublicKeySet.from_jwks(document)

    async def ensure(self, token: str) -> None:
        """Load the key the token names, if the gateway publishes it and it is not loaded yet."""
        kid = _kid_of(token)
        if kid is None or self.get(kid) is not None:
            return
        async with self._lock:
            if self.get(kid) is not None:
                return
            if len(self._keys) and time.monotonic() - self._last_refetch < self.refetch_every:
                return
            self._last_refetch = time.monotonic()
            try:
                await self.load()
            except ConfigError as exc:
                log.warning("JWKS refresh failed: %s", exc.message)


class TokenGuard:
    """Admits a call only with a valid, unused action token for this upstream, tool and arguments."""

    def __init__(self, upstream: str, keys: GatewayKeys, ledger: SqliteJtiLedger) -> None:
        self.upstream = upstream
        self.keys = keys
        self.ledger = ledger
        self.verifier = ActionTokenVerifier(keys)

    @classmethod
    async def from_env(cls, upstream: str, data_dir: Path) -> TokenGuard:
        """Keys from ``$INTENTGATE_JWKS`` (a file must load now; a URL may come up later)."""
        source = os.environ.get(JWKS_ENV)
        if not source:
            raise ConfigError(f"set {JWKS_ENV} to the gateway's JWKS file or URL")
        keys = GatewayKeys(source)
        try:
            await keys.load()
        except ConfigError as exc:
            if not keys.is_url:
                raise
            log.warning("JWKS not loaded yet, will retry on the first call: %s", exc.message)
        return cls(upstream, keys, SqliteJtiLedger(data_dir / f"{upstream}-jti.db"))

    async def check(self, tool: str, arguments: dict[str, Any], meta: Mapping[str, Any] | None) -> ActionClaims:
        """The verified claims of the call's token, burnt; ``Refused`` with the reason code otherwise."""
        token = (meta or {}).get(TOKEN_META_KEY)
        if not isinstance(token, str) or not token:
            raise Refused(ReasonCode.INVALID_TOKEN.value, "no action token in _meta")
        try:
            await self.keys.ensure(token)
            return await self.verifier.verify_and_consume(
                token, tool=f"{self.upstream}.{tool}", arguments=arguments, audience=self.upstream, ledger=self.ledger
            )
        except (TokenError, StoreError) as exc:
            raise Refused(exc.code.value, exc.message) from exc

    def close(self) -> None:
        self.ledger.close()
