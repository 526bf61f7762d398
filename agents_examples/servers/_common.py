"""What every example tool server shares: data dir, SQLite, the tool table, the call guard.

A server is a list of :class:`Tool` s (name, JSON Schema of the arguments, a handler taking a
:class:`Call`) handed to :func:`serve`, which parses ``--data-dir``, opens and seeds the
server's SQLite file, and serves the tools over stdio with the SDK's low-level server.  Each
call is answered with structured content and a JSON text rendering of it; a business failure
(:class:`ToolFailure`) is an ``isError`` result ``error: <code>: <message>``.

With ``verify_tokens=True`` (payments) every call must carry an action token, checked by
:class:`agents_examples.servers._tokens.TokenGuard` before the arguments are even looked at;
a refusal is an ``isError`` result ``refused: <reason code>``.  The token check (and with it
the ``gateway`` package) is imported only by servers that verify tokens, so the others start
faster.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.to_thread
import jsonschema
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

if TYPE_CHECKING:
    from intentgate.verify import ActionClaims

__all__ = [
    "Call",
    "Guard",
    "Refused",
    "Tool",
    "ToolFailure",
    "amount",
    "cents",
    "now_iso",
    "serve",
    "transaction",
]

log = logging.getLogger("agents_examples.servers")

DATA_DIR_ENV = "EXAMPLE_DATA_DIR"


# ----- tools --------------------------------------------------------------------------------


class ToolFailure(Exception):
    """A failure the caller can act on (unknown order, currency mismatch, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Refused(Exception):
    """A call refused before it was looked at (no valid action token); ``code`` is a reason code."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(detail or code)
        self.code = code


class Guard(Protocol):
    """Admits a call (returning what it proved, e.g. verified token claims) or raises ``Refused``."""

    async def check(self, tool: str, arguments: dict[str, Any], meta: Mapping[str, Any] | None) -> Any: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Call:
    """One validated tool call as a handler sees it."""

    db: sqlite3.Connection
    args: dict[str, Any]
    claims: ActionClaims | None = None  # the verified action token, on servers with a guard


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


# ----- the server -----------------------------------------------------------------------------


def build_server(name: str, tools: Sequence[Tool], db: sqlite3.Connection, guard: Guard | None) -> Server[Any]:
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
            except Refused as exc:
                log.warning("refused %s.%s: %s (%s)", name, params.name, exc.code, exc)
                return _refusal(exc.code)
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
    guard: Guard | None = None
    if verify:
        from ._tokens import ConfigError, TokenGuard  # imports the gateway's verifier

        try:
            guard = await TokenGuard.from_env(name, directory)
        except ConfigError as exc:
            raise SystemExit(f"{name}: {exc.message}") from exc
    server = build_server(name, tools, db, guard)
    try:
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())
    finally:
        if guard is not None:
            guard.close()


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
    finally:
        db.close()
