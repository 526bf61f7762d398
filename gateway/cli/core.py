"""Top-level commands: ``check`` and ``demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import GatewayError
from ..intents import Severity, check_intents
from .common import ConfigOption, config_or_exit, console, err_console, run

__all__ = ["register_core"]


def check(
    config: ConfigOption = None,
    intents: Annotated[Path | None, typer.Option(help="intents directory (default: from config, else ./intents)")] = None,
    policy: Annotated[Path | None, typer.Option(help="policy directory (default: from config, else ./opa)")] = None,
    strict: Annotated[bool, typer.Option(help="treat warnings as errors")] = False,
) -> None:
    """Validate and lint the intents and compile the policy.  Exit 1 on any error."""
    from ..policy import EmbeddedEngine

    cfg = config_or_exit(config, intents_dir=intents, policy_dir=policy)
    try:
        registry, problems = check_intents(cfg.intents_dir)
    except GatewayError as exc:
        err_console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(1) from exc
    for p in problems:
        colour = "red" if p.severity is Severity.ERROR else "yellow"
        console.print(f"[{colour}]{p}[/{colour}]", highlight=False, soft_wrap=True)
    errors = sum(p.severity is Severity.ERROR for p in problems)
    warnings = len(problems) - errors

    policy_ok = True
    try:
        engine = EmbeddedEngine(cfg.policy_dir, registry.data_document(), environment=cfg.environment)
        revision = engine.revision
    except GatewayError as exc:
        policy_ok = False
        console.print(f"[red]error: {cfg.policy_dir}: {exc.message}[/red]", highlight=False, soft_wrap=True)

    steps = sum(len(i.steps) for i in registry)
    console.print(
        f"{len(registry)} intents ({steps} steps) in {cfg.intents_dir}: "
        f"{errors} error(s), {warnings} warning(s)",
        highlight=False,
    )
    if policy_ok:
        console.print(f"policy in {cfg.policy_dir} compiles (revision {revision})", highlight=False)
    if errors or not policy_ok or (strict and warnings):
        raise typer.Exit(1)


def demo(
    data_dir: Annotated[
        Path | None, typer.Option(help="where to keep the demo database and keys (default: a temp dir)")
    ] = None,
) -> None:
    """Run a scripted agent through the decision core and show what is allowed and denied."""
    from ..demo import print_report, run_demo

    report = run(run_demo(data_dir))
    print_report(report, console)
    if not report.chain_ok:
        raise typer.Exit(1)


def register_core(app: typer.Typer) -> None:
    app.command()(check)
    app.command()(demo)

