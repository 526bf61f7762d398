"""Top-level commands: ``init``, ``check``, ``demo`` and ``agent-token``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import GatewayError
from .common import ConfigOption, config_or_exit, console, err_console, project_or_exit

__all__ = ["register_core"]


def init(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="where to write the project (created if missing)")] = Path("."),
    force: Annotated[bool, typer.Option("--force", help="overwrite files that exist already")] = False,
) -> None:
    """Write a working project into DIRECTORY: intentgate.yaml (SQLite, embedded Rego, the development
    issuer, the example tool servers as upstreams), intents/ with the example intents and their
    fixtures, opa/ with the base policy and its Rego tests.  Refuses to overwrite a file unless --force."""
    from ..project import init_project

    try:
        written = init_project(directory, force=force)
    except GatewayError as exc:
        err_console.print(f"[red]error:[/red] {exc.message}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from exc
    console.print(f"wrote {len(written)} files in {directory.resolve()}:", highlight=False, soft_wrap=True)
    for path in written:
        console.print(f"  {path.relative_to(directory).as_posix()}", highlight=False, soft_wrap=True)
    import shlex

    here = [] if directory.resolve() == Path.cwd().resolve() else [f"cd {shlex.quote(str(directory))}"]
    steps = [
        *here,
        "intentgate check          # lint the intents, ask the example tool servers for their tools, compile the policy",
        "intentgate policy test    # the Rego tests in opa/",
        "intentgate intent test    # the intents' fixtures, offline",
        "intentgate serve          # the gateway on 127.0.0.1:8080: MCP at /mcp, the reviewer UI at /ui",
    ]
    console.print("next (intentgate reads ./intentgate.yaml when there is no --config):", highlight=False,
                  soft_wrap=True)
    for step in steps:
        console.print(f"  {step}", highlight=False, markup=False, soft_wrap=True)


def check(
    config: ConfigOption = None,
    intents: Annotated[Path | None, typer.Option(help="intents directory (default: from config, else ./intents)")] = None,
    policy: Annotated[Path | None, typer.Option(help="policy directory (default: from config, else ./opa)")] = None,
    strict: Annotated[bool, typer.Option(help="treat warnings as errors")] = False,
    offline: Annotated[bool, typer.Option(help="do not ask the configured upstreams for their tools")] = False,
) -> None:
    """Validate and lint the intents, hold every step against its upstream's tools (each
    configured upstream is started and asked for tools/list; --offline skips it), and compile
    the policy.  Every problem names file, line, intent, step and field.  Exit 1 on any error."""
    from ..intents import Severity, check_intents
    from ..policy import EmbeddedEngine

    cfg = config_or_exit(config, intents_dir=intents, policy_dir=policy)
    project_or_exit(cfg, config, code=1, given=(intents, policy))
    try:
        registry, problems = check_intents(cfg.intents_dir, default_begin=cfg.tasks.begin)
    except GatewayError as exc:
        err_console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(1) from exc
    checked_tools = ""
    if offline:
        checked_tools = "tools not checked (--offline)"
    elif not cfg.upstreams:
        checked_tools = "tools not checked (no upstreams configured)"
    else:
        import asyncio

        from ..catalogue import check_against, fetch_catalogue

        with err_console.status(f"asking {len(cfg.upstreams)} upstream(s) for their tools"):
            catalogue = asyncio.run(fetch_catalogue(cfg))
        problems += check_against(registry, catalogue)
        listed = sum(len(t) for t in catalogue.tools.values())
        checked_tools = f"steps checked against {listed} tools of {len(catalogue.tools)} upstream(s)"
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
        f"{errors} error(s), {warnings} warning(s); {checked_tools}",
        highlight=False,
    )
    if policy_ok:
        console.print(f"policy in {cfg.policy_dir} compiles (revision {revision})", highlight=False)
    if errors or not policy_ok or (strict and warnings):
        raise typer.Exit(1)


def demo(
    data_dir: Annotated[
        Path | None,
        typer.Option(help="where to keep the demo's config, database, keys and tool servers' data (default: a temp dir)"),
    ] = None,
    serve: Annotated[bool, typer.Option(help="keep the gateway running after the summary, until Ctrl-C or SIGTERM")] = True,
    port: Annotated[int | None, typer.Option(help="the gateway's port on 127.0.0.1 (default: a free one)",
                                             show_default=False)] = None,
) -> None:
    """Start the gateway with the example tool servers, run the example agents, show what it decided."""
    from ..demo import run_demo

    try:
        ok = run_demo(data_dir, serve=serve, console=console, port=port)
    except (GatewayError, RuntimeError) as exc:
        err_console.print(f"[red]error:[/red] {getattr(exc, 'message', exc)}")
        raise typer.Exit(1) from exc
    if not ok:
        raise typer.Exit(1)


def agent_token(
    agent: Annotated[str, typer.Option(help="agent id, e.g. spiffe://example.org/agent/support-1")],
    ttl: Annotated[str, typer.Option(help="lifetime: seconds, or with a unit: 90s, 15m, 1h, 1d")] = "1h",
    config: ConfigOption = None,
) -> None:
    """Mint a workload token for AGENT from the gateway's development issuer (prints the JWT)."""
    from ..identity import DevIssuer
    from ..keys import KeySet

    cfg = config_or_exit(config)
    if not cfg.identity.dev_issuer:
        err_console.print("[red]error:[/red] the development issuer is disabled (identity.dev_issuer: false)")
        raise typer.Exit(2)
    try:
        seconds = _duration(ttl)
        token = DevIssuer(KeySet.open_or_create(cfg.agent_issuer_keys_dir)).mint(agent, seconds)
    except (GatewayError, ValueError) as exc:
        err_console.print(f"[red]error:[/red] {getattr(exc, 'message', exc)}")
        raise typer.Exit(2) from exc
    print(token)


def _duration(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    value = int(text[:-1]) * units[text[-1]] if text and text[-1] in units else int(text)
    if not 1 <= value <= 30 * 86400:
        raise ValueError("ttl must be between 1 second and 30 days")
    return value


def register_core(app: typer.Typer) -> None:
    app.command()(init)
    app.command()(check)
    app.command()(demo)
    app.command("agent-token")(agent_token)
    from .serve import serve, stdio

    app.command()(serve)
    app.command()(stdio)
