"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console

from ..errors import GatewayError

if TYPE_CHECKING:  # imported by the commands that use it (see gateway.cli)
    from ..config import GatewayConfig

T = TypeVar("T")

console = Console()
err_console = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", envvar="INTENTGATE_CONFIG", help="intentgate.yaml to use", show_default=False),
]


def config_or_exit(path: Path | None, **overrides: Any) -> GatewayConfig:
    from ..config import load_config

    try:
        return load_config(path, **overrides)
    except GatewayError as exc:
        err_console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from exc


def database_or_exit(cfg: GatewayConfig) -> None:
    """A command that reads the gateway's records needs its database: say where it looked, and
    why it is not there, rather than the driver's "unable to open database file"."""
    if cfg.store.url is not None:
        return
    path = cfg.data_dir / "intentgate.db"
    if not path.is_file():
        err_console.print(
            f"[red]error:[/red] no database at {path}: run this where the gateway's intentgate.yaml is, or pass "
            "--config (or set INTENTGATE_CONFIG); the gateway creates its database when it first serves",
            highlight=False)
        raise typer.Exit(2)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine; turn gateway errors into a clean message and exit code 1."""
    import asyncio

    try:
        return asyncio.run(coro)
    except GatewayError as exc:
        err_console.print(f"[red]error ({exc.code.value}):[/red] {exc.message}")
        raise typer.Exit(1) from exc


def record_action(cfg: GatewayConfig, kind: str, *, actor: str, subject: dict[str, Any]) -> None:
    """Append an operator action to the decision log, or exit 1: an action the log does not
    hold must not take effect unseen."""
    import getpass
    import time

    from ..store import Store
    from ..store.ledger import append_decision, review_record

    try:
        who = actor or getpass.getuser()
    except (KeyError, OSError):
        who = "unknown"
    try:
        store = Store.open(cfg.database_url, timeout=cfg.store.timeout_seconds, migrate=cfg.store.migrate)
        try:
            record = review_record(kind, actor=who, at=time.time(), subject=subject)
            store.db.run_sync(lambda conn: append_decision(conn, record))  # blocking: no event loop needed
        finally:
            store.close()
    except GatewayError as exc:
        err_console.print(f"[red]error:[/red] could not record {kind} in the decision log: {exc.message}",
                          highlight=False)
        raise typer.Exit(1) from exc
