"""What every example tool server shares: data dir, SQLite, the tool table, the token check.

A server is a list of :class:`Tool` s (name, JSON Schema of the arguments, a handler taking a
:class:`Call`) handed to :func:`serve`, which parses ``--data-dir``, opens and seeds the
server's SQLite file, and serves the tools over stdio with the SDK's low-level server.  Each
call is answered with structured content and a JSON text rendering of it; a business failure
(:class:`ToolFailure`) is an ``isError`` result ``error: <code>: <message>``.

With ``verify_tokens=True`` (payments) every call must carry an action token in
``_meta["intentgate/token"]``; :class:`TokenGuard` checks it with :mod:`gateway.verify`
before the arguments are even looked at, and a refusal is an ``isError`` result
``refused: <reason code>``.  The gateway's public keys come from ``INTENTGATE_JWKS``: a JWKS
file or the gateway's ``http(s)://.../.well-known/jwks.json``, re-read when a token names a
key id not seen yet (so key rotation needs no restart).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx2
import jsonschema
import jwt
import mcp_types as types
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

from gateway.errors import ConfigError, ReasonCode, StoreError, TokenError
from gateway.keys import PublicKeySet
from gateway.verify import ActionClaims, ActionTokenVerifier, SqliteJtiLedger

__all__ = [
    "Call",
    "GatewayKeys",
    "TOKEN_META_KEY",
    "Tool",
    "TokenGuard",
    "ToolFailure",
    "amount",
    "cents",
    "now_iso",
    "serve",
    "transaction",
]

log = logging.getLogger("agents_examples.servers")

TOKEN_META_KEY = "intentgate/token"
DATA_DIR_ENV = "EXAMPLE_DATA_DIR"
JWKS_ENV = "INTENTGATE_JWKS"


# ----- tools --------------------------------------------------------------------------------


class ToolFailure(Exception):
    """A failure the caller can act on (unknown order, currency mismatch, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Call:
    """One validated tool call as a handler sees it."""

    db: sqlite3.Connection
    args: dict[str, Any]
    claims: ActionClaims | None = None  # the verified action token, on servers that check them


@dataclass(frozen=True)
class Tool:
    """A tool: its JSON Schema (``properties`` + ``required``) and a blocking handler."""

    name: str
    description: str
    handler: Callable[[Call], dict[str, Any]]
    properties: dict[str, Any] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    read_only: bool = True

    @property
    def input_schema(self) -> dict[str, Any]:
        return {"type": "object", "properties": self.properties, "required": list(self.required),
                "additionalProperties": False}

    def describe(self) -> types.Tool:
        return types.Tool(
            name=self.name, description=self.description, input_schema=self.input_schema,
            annotations=types.ToolAnnotations(
                read_only_hint=self.read_only, destructive_hint=False, open_world_hint=False,
                idempotent_hint=self.read_only,
            ),
        )


def _result(structured: dict[str, Any], text: str | None = None, *, error: bool = False) -> types.CallToolResult:
    body = text if text is not None else json.dumps(structured, indent=2, ensure_ascii=False)
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=body)], structured_content=structured, is_error=error
    )


def _failure(code: str, message: str) -> types.CallToolResult:
    return _result({"error": code, "message": message}, f"error: {code}: {message}", error=True)


def _refusal(code: str) -> types.CallToolResult:
    return _result({"refused": code}, f"refused: {code}", error=True)


# ----- money and time -------------------------------------------------------------------------


def cents(value: float | int) -> int:
    """An amount in minor units; more than two decimals is a ``ToolFailure``."""
    try:
        exact = Decimal(repr(value)) * 100
    except InvalidOperation as exc:
        raise ToolFailure("invalid_amount", f"{value!r} is not an amount") from exc
    if not exact.is_finite() or exact != exact.to_integral_value():
        raise ToolFailure("invalid_amount", f"{value!r} has more than two decimals")
    return int(exact)


def amount(minor: int) -> float:
    """Minor units back to a JSON number (4250 -> 42.5)."""
    return minor / 100


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ----- SQLite ---------------------------------------------------------------------------------


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any exception."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def open_db(path: Path, schema: str, seed: Callable[[sqlite3.Connection], None]) -> sqlite3.Connection:
    """Open (creating) the server's database and seed it once, atomically."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA foreign_keys=ON")
    db.executescript(schema + "\nCREATE TABLE IF NOT EXISTS seeded (at TEXT NOT NULL);")
    with transaction(db):
        if db.execute("SELECT count(*) FROM seeded").fetchone()[0] == 0:
            seed(db)
            db.execute("INSERT INTO seeded (at) VALUES (?)", (now_iso(),))
    return db


# ----- action tokens --------------------------------------------------------------------------


def _kid_of(token: str) -> str | None:
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.InvalidTokenError:
        return None
    return kid if isinstance(kid, str) else None


class GatewayKeys:
    """The gateway's public keys from a JWKS file or URL; re-read when a token names a new kid.

    Re-reads for unknown key ids happen at most once per ``refetch_every`` seconds, so tokens
    with made-up key ids cannot turn this server into a load generator against the gateway.
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
        """Make sure the key the token names is loaded if the gateway publishes it."""
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
    """Checks each call's action token for this upstream, then burns it in the server's ledger."""

    def __init__(self, upstream: str, keys: GatewayKeys, ledger: SqliteJtiLedger) -> None:
        self.upstream = upstream
        self.keys = keys
        self.ledger = ledger
        self.verifier = ActionTokenVerifier(keys)

    async def check(self, tool: str, arguments: dict[str, Any], meta: Mapping[str, Any] | None) -> ActionClaims:
        """The verified claims, or ``TokenError`` / ``StoreError``."""
        token = (meta or {}).get(TOKEN_META_KEY)
        if not isinstance(token, str) or not token:
            raise TokenError("no action token in _meta", code=ReasonCode.INVALID_TOKEN)
        await self.keys.ensure(token)
        return await self.verifier.verify_and_consume(
            token, tool=f"{self.upstream}.{tool}", arguments=arguments, audience=self.upstream, ledger=self.ledger
        )


# ----- the server -----------------------------------------------------------------------------


def build_server(name: str, tools: Sequence[Tool], db: sqlite3.Connection, guard: TokenGuard | None) -> Server[Any]:
    by_name = {t.name: t for t in tools}
    validators = {t.name: jsonschema.Draft202012Validator(t.input_schema) for t in tools}
    listing = types.ListToolsResult(tools=[t.describe() for t in tools])
    db_lock = anyio.Lock()

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return listing

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        arguments = dict(params.arguments or {})
        claims = None
        if guard is not None:
            try:
                claims = await guard.check(params.name, arguments, params.meta)
            except (TokenError, StoreError) as exc:
                log.warning("refused %s.%s: %s (%s)", name, params.name, exc.code.value, exc.message)
                return _refusal(exc.code.value)
        tool = by_name.get(params.name)
        if tool is None:
            return _failure("unknown_tool", f"{name} has no tool {params.name!r}")
        problem = jsonschema.exceptions.best_match(validators[tool.name].iter_errors(arguments))
        if problem is not None:
            where = "/".join(str(p) for p in problem.absolute_path) or "arguments"
            return _failure("invalid_arguments", f"{where}: {problem.message}")
        try:
            async with db_lock:
                result = await anyio.to_thread.run_sync(tool.handler, Call(db, arguments, claims))
        except ToolFailure as exc:
            return _failure(exc.code, exc.message)
        except Exception:  # noqa: BLE001 - the details go to the log, never to the caller
            log.exception("%s.%s failed", name, tool.name)
            return _failure("internal_error", "the tool failed; see the server log")
        return _result(result)

    return Server(name, version="1.0", on_list_tools=list_tools, on_call_tool=call_tool)


def data_dir(name: str, argv: Sequence[str] | None = None) -> Path:
    """``--data-dir``, else ``$EXAMPLE_DATA_DIR``, else a new temporary directory."""
    parser = argparse.ArgumentParser(prog=f"python -m agents_examples.servers.{name}",
                                     description=f"The example '{name}' MCP tool server (stdio).")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help=f"where {name}.db lives (default: ${DATA_DIR_ENV}, else a temporary directory)")
    args = parser.parse_args(argv)
    chosen = args.data_dir or (Path(os.environ[DATA_DIR_ENV]) if os.environ.get(DATA_DIR_ENV) else None)
    if chosen is None:
        chosen = Path(tempfile.mkdtemp(prefix=f"intentgate-example-{name}-"))
    chosen.mkdir(parents=True, exist_ok=True)
    return chosen


async def _serve(name: str, tools: Sequence[Tool], db: sqlite3.Connection, directory: Path, verify: bool) -> None:
    guard = None
    if verify:
        source = os.environ.get(JWKS_ENV)
        if not source:
            raise ConfigError(f"{name}: set {JWKS_ENV} to the gateway's JWKS file or URL")
        keys = GatewayKeys(source)
        try:
            await keys.load()
        except ConfigError as exc:
            if not keys.is_url:
                raise
            log.warning("JWKS not loaded yet, will retry on the first call: %s", exc.message)
        guard = TokenGuard(name, keys, SqliteJtiLedger(directory / f"{name}-jti.db"))
    server = build_server(name, tools, db, guard)
    try:
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())
    finally:
        if guard is not None:
            guard.ledger.close()


def serve(
    name: str, tools: Sequence[Tool], *, schema: str, seed: Callable[[sqlite3.Connection], None],
    verify_tokens: bool = False, argv: Sequence[str] | None = None,
) -> None:
    """Run one example server on stdio until its client goes away."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format=f"{name}: %(levelname)s %(message)s")
    directory = data_dir(name, argv)
    db = open_db(directory / f"{name}.db", schema, seed)
    log.info("data in %s", directory)
    try:
        anyio.run(_serve, name, tools, db, directory, verify_tokens)
    except ConfigError as exc:
        sys.exit(f"{name}: {exc.message}")
    finally:
        db.close()
