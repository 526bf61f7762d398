"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console

from ..errors import GatewayError

if TYPE_CHECKING:  # imported by the commands that use it (see intentgate.cli)
    from ..config import GatewayConfig

T = TypeVar("T")

console = Console()
err_console = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", envvar="INTENTGATE_CONFIG", show_default=False,
                 help="intentgate.yaml to use (default: ./intentgate.yaml if there is one)"),
]

#: read when no --config (or INTENTGATE_CONFIG) is given and the working directory has one
PROJECT_CONFIG = Path("intentgate.yaml")


def config_or_exit(path: Path | None, **overrides: Any) -> GatewayConfig:
    """The config from ``path``, else ``./intentgate.yaml`` (a project ``intentgate init`` wrote),
    else the defaults (``intents/``, ``opa/``, ``var/`` in the working directory)."""
    from ..config import load_config

    if path is None and PROJECT_CONFIG.is_file():
        path = PROJECT_CONFIG
    try:
        return load_config(path, **overrides)
    except GatewayError as exc:
        err_console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from exc


def project_or_exit(cfg: GatewayConfig, config: Path | None, *, code: int = 2,
                    given: tuple[Path | None, Path | None] = (None, None)) -> None:
    """A command that reads the intents and the policy needs both directories: say where it looked
    and how to make a project, rather than lint nothing.  ``given``: the ``--intents`` and
    ``--policy`` options, when the command has them (a directory named there that is not there
    is simply said not to exist)."""
    dirs = (("intents", cfg.intents_dir), ("policy", cfg.policy_dir))
    for (what, where), option in zip(dirs, given, strict=True):
        if option is not None and not where.is_dir():
            err_console.print(f"[red]error:[/red] {what} directory {where} does not exist", highlight=False,
                              soft_wrap=True)
            raise typer.Exit(code)
    missing = [f"{what} at {where}" for what, where in dirs if not where.is_dir()]
    if not missing:
        return
    looked = "as the config says" if config is not None or PROJECT_CONFIG.is_file() else (
        "no --config given and no ./intentgate.yaml here")
    err_console.print(
        f"[red]error:[/red] no {' and no '.join(missing)} ({looked}). Create a project with "
        "`intentgate init DIR` and run this in DIR, or pass --config (or set INTENTGATE_CONFIG), or --intents and --policy",
        highlight=False, soft_wrap=True)
    raise typer.Exit(code)


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
