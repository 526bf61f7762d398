"""``intentgate keys``: the action-token signing keys."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.table import Table

from ..errors import GatewayError
from .common import ConfigOption, config_or_exit, console, err_console, record_action

if TYPE_CHECKING:
    from ..keys import KeySet

__all__ = ["keys_app"]

keys_app = typer.Typer(help="Manage the action-token signing keys.", no_args_is_help=True)

KeyDir = Annotated[
    Path | None, typer.Option("--dir", help="key directory (default: <data_dir>/keys/action from config)")
]


def _keyset(config: Path | None, directory: Path | None) -> KeySet:
    from ..keys import KeySet

    path = directory or config_or_exit(config).action_keys_dir
    try:
        return KeySet(path)
    except GatewayError as exc:
        _fail(exc.message)


def _fail(message: str) -> NoReturn:
    err_console.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(2)


AuditOption = Annotated[bool, typer.Option(
    "--audit", help="rotate the audit key that signs checkpoints (<data_dir>/keys/audit) instead; retired audit "
                    "keys' public halves are kept, so older checkpoints still verify")]


@keys_app.command("rotate")
def rotate(config: ConfigOption = None, directory: KeyDir = None, audit: AuditOption = False) -> None:
    """Create a new signing key; the previous one stays published for verification.

    The rotation is recorded in the decision log (kind keys/rotate) when a config is used."""
    cfg = None if directory is not None else config_or_exit(config)
    if audit:
        if cfg is None:
            _fail("--audit rotates the key of the configured gateway: use --config, not --dir")
        from ..keys import KeySet

        try:
            keyset = KeySet(cfg.audit_keys_dir, retire_public=True)
        except GatewayError as exc:
            _fail(exc.message)
    else:
        keyset = _keyset(config, directory)
    previous = keyset.current.kid if len(keyset) else None
    if cfg is not None:  # recorded first: a key that signs must never be missing from the log
        record_action(cfg, "keys/rotate", actor="", subject={
            "keys": "audit" if audit else "action", "previous": previous, "directory": str(keyset.directory)})
    try:
        new = keyset.rotate()
    except OSError as exc:
        _fail(f"cannot write a key to {keyset.directory}: {exc.strerror or exc}")
    console.print(f"new signing key: {new.kid}")
    if previous:
        console.print(f"previous key {previous} stays in the JWKS until the next rotation")


@keys_app.command("jwks")
def jwks(config: ConfigOption = None, directory: KeyDir = None) -> None:
    """Print the public JWKS (current and previous key)."""
    print(json.dumps(_keyset(config, directory).jwks(), indent=2))


@keys_app.command("list")
def list_keys(config: ConfigOption = None, directory: KeyDir = None) -> None:
    """List the signing keys on disk."""
    keyset = _keyset(config, directory)
    table = Table("kid", "created", "role")
    published = keyset.published()
    for i, key in enumerate(reversed(published)):
        created = datetime.fromtimestamp(key.created / 1000, tz=UTC).isoformat(timespec="seconds")
        table.add_row(key.kid, created, "current (signs)" if i == 0 else "previous (verifies)")
    console.print(table)
    if not published:
        console.print("no keys yet; `intentgate keys rotate` creates one")
