"""``intentgate task``: begin a task for an agent, or sign a task grant a host hands to an agent.

Both act as the ``local`` task issuer: whoever can read the gateway's config and keys (an
operator, or a host application running next to ``intentgate stdio``).  ``task begin``
writes the task to the gateway's database (no running gateway needed) and prints its id;
``task grant`` prints a signed, single-use task grant (``intentgate.tasks``) the agent presents
to ``intentgate__begin_task``.
"""

from __future__ import annotations

import getpass
import json
from typing import Annotated, Any

import typer

from ..errors import GatewayError, TaskError
from .common import ConfigOption, config_or_exit, console, err_console, run

__all__ = ["task_app"]

task_app = typer.Typer(no_args_is_help=True, help="Begin tasks for agents and sign task grants (the local issuer).")

AgentOption = Annotated[str, typer.Option(help="the agent the task is for, e.g. spiffe://example.org/agent/support-1")]
IntentOption = Annotated[str, typer.Option(help="the intent to begin")]
ParamOption = Annotated[
    list[str] | None,
    typer.Option("--param", "-p", help="a task parameter NAME=VALUE (repeatable; VALUE as JSON if it parses)"),
]
ReasonOption = Annotated[str, typer.Option(help="why the task is needed (kept in the audit log)")]


def _params(items: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            err_console.print(f"[red]error:[/red] --param {item!r} is not NAME=VALUE")
            raise typer.Exit(2)
        try:
            out[name] = json.loads(value)
        except ValueError:
            out[name] = value
    return out


def _seconds(text: str) -> int:
    from .core import _duration

    try:
        return _duration(text)
    except ValueError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc


@task_app.command("begin")
def begin(
    agent: AgentOption,
    intent: IntentOption,
    reason: ReasonOption,
    param: ParamOption = None,
    ttl: Annotated[str | None, typer.Option(help="task lifetime (default: the intent's), e.g. 10m")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the task as JSON")] = False,
    config: ConfigOption = None,
) -> None:
    """Begin a task of INTENT for AGENT as the local task issuer; prints the task id."""
    from ..identity import AgentIdentity
    from ..runtime import Runtime
    from ..tasks import LOCAL_ISSUER, TaskIssuer

    cfg = config_or_exit(config)
    params = _params(param)
    ttl_seconds = _seconds(ttl) if ttl else None

    async def go() -> Any:
        rt = await Runtime.open(cfg)
        try:
            issuer = TaskIssuer(LOCAL_ISSUER, f"cli:{getpass.getuser()}", "cli")
            return await rt.decider.begin_task(AgentIdentity(id=agent), intent, params, reason, issuer=issuer,
                                               ttl_seconds=ttl_seconds)
        finally:
            await rt.aclose()

    started = run(go())
    if as_json:
        print(started.model_dump_json(indent=2))
        return
    console.print(f"task [bold]{started.task_id}[/bold] ({started.intent} v{started.intent_version}) for {agent}, "
                  f"begun by {started.issuer}; start with: {', '.join(started.start_steps)}", highlight=False)


@task_app.command("grant")
def grant(
    agent: AgentOption,
    intent: IntentOption,
    reason: ReasonOption,
    param: ParamOption = None,
    ttl: Annotated[str, typer.Option(help="how long the grant may be presented, e.g. 5m")] = "5m",
    task_ttl: Annotated[str | None, typer.Option(help="lifetime of the task it begins (default: the intent's)")] = None,
    config: ConfigOption = None,
) -> None:
    """Sign a single-use task grant for AGENT (prints the JWT): the agent presents it once to
    intentgate__begin_task ({"grant": ...}) and gets exactly this task."""
    from ..keys import KeySet
    from ..tasks import TaskGrantMinter

    cfg = config_or_exit(config)
    if not cfg.tasks.local_issuer:
        err_console.print("[red]error:[/red] the local task issuer is disabled (tasks.local_issuer: false)")
        raise typer.Exit(2)
    seconds = _seconds(ttl)
    if seconds > cfg.tasks.grant_max_ttl_seconds:
        err_console.print(f"[red]error:[/red] --ttl is beyond tasks.grant_max_ttl_seconds "
                          f"({cfg.tasks.grant_max_ttl_seconds} s)")
        raise typer.Exit(2)
    try:
        minter = TaskGrantMinter(KeySet.open_or_create(cfg.task_issuer_keys_dir))
        token, _ = minter.mint(agent=agent, intent=intent, params=_params(param), reason=reason,
                               ttl_seconds=seconds, task_ttl_seconds=_seconds(task_ttl) if task_ttl else None,
                               requested_by=f"cli:{getpass.getuser()}")
    except (GatewayError, TaskError) as exc:
        err_console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from exc
    print(token)
