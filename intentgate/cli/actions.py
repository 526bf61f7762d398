"""Reviewer actions: ``approvals``, ``approve``, ``reject``, ``grant``, ``grants``, ``sign-off``,
``revoke-grant`` and ``replay``.

Like the other reviewer commands they work on the database named by the config (no running
gateway needed), through :class:`~intentgate.review.ReviewService`, so they do exactly what the
REST API does.  The reviewer is whoever runs the command (``--reviewer``, default
``cli:$USER``), recorded on every approval, grant and sign-off.
"""

from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from ..errors import ConfigError
from .common import ConfigOption, config_or_exit, console, err_console
from .review import JsonOption, SinceOption, _fail, _when, _with_service, parse_time

if TYPE_CHECKING:
    from ..replay import ReplayReport
    from ..review import ReviewService, Reviewer
    from ..review.models import ApprovalPublic, GrantPublic

__all__ = ["register_actions"]

ReviewerOption = Annotated[
    str | None, typer.Option("--reviewer", help="who is acting (default: cli:$USER)", show_default=False)
]
NoteOption = Annotated[str | None, typer.Option(help="a note kept with the decision", show_default=False)]


def _reviewer(name: str | None) -> Reviewer:
    from ..review import Reviewer

    return Reviewer(id=name or f"cli:{getpass.getuser()}", issuer="intentgate-cli", via="cli")


def _print_json(items: list[ApprovalPublic] | list[GrantPublic] | ApprovalPublic | GrantPublic) -> None:
    if isinstance(items, list):
        sys.stdout.write("[" + ",\n".join(i.model_dump_json(indent=2) for i in items) + "]\n")
    else:
        sys.stdout.write(items.model_dump_json(indent=2) + "\n")


# ----- approvals -------------------------------------------------------------------------
def approvals(
    status: Annotated[str, typer.Option(help="pending, approved, rejected, used or any")] = "pending",
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """List approvals: by default the queue of held calls waiting for a reviewer, oldest first."""
    if status not in {"pending", "approved", "rejected", "used", "any"}:
        raise _fail(f"--status must be pending, approved, rejected, used or any, not {status!r}")
    cfg = config_or_exit(config)
    found = _with_service(cfg, lambda s: s.approvals(status=None if status == "any" else status))
    if as_json:
        _print_json(found)
        return
    table = Table(title=f"approvals ({status})", show_lines=False)
    for col in ("id", "status", "agent", "task", "step", "tool", "reasons", "expires"):
        table.add_column(col, overflow="fold")
    for a in found:
        table.add_row(a.id, a.status, a.agent, a.task_id, a.step, a.tool, ", ".join(a.reasons), _when(a.expires_at))
    console.print(table)


def _decide(approval_id: str, approve: bool, reviewer: str | None, note: str | None, as_json: bool,
            config: Path | None) -> None:
    from ..store import ApprovalConflict

    cfg = config_or_exit(config)
    who = _reviewer(reviewer)
    try:
        decided = _with_service(cfg, lambda s: s.decide_approval(approval_id, approve=approve, reviewer=who, note=note))
    except ApprovalConflict as exc:
        raise _fail(f"approval {approval_id}: {exc.why}", code=1) from None
    if as_json:
        _print_json(decided)
        return
    console.print(f"approval {decided.id} [bold]{decided.status}[/bold] by {decided.decided_by}: "
                  f"{decided.tool} on task {decided.task_id} (the agent's identical retry is now "
                  f"{'allowed, once' if approve else 'held again'})", highlight=False)


def approve(
    approval_id: Annotated[str, typer.Argument(help="the approval id (apr_...)")],
    note: NoteOption = None, reviewer: ReviewerOption = None, as_json: JsonOption = False, config: ConfigOption = None,
) -> None:
    """Approve a held call, once: the agent's retry with the same arguments is then allowed, once."""
    _decide(approval_id, True, reviewer, note, as_json, config)


def reject(
    approval_id: Annotated[str, typer.Argument(help="the approval id (apr_...)")],
    note: NoteOption = None, reviewer: ReviewerOption = None, as_json: JsonOption = False, config: ConfigOption = None,
) -> None:
    """Reject a held call, once."""
    _decide(approval_id, False, reviewer, note, as_json, config)


# ----- grants ----------------------------------------------------------------------------
def grant(
    agent: Annotated[str, typer.Option(help="the agent's id (its workload token's sub)")],
    reason: Annotated[str, typer.Option(help="why the exception is needed (mandatory)")],
    tool: Annotated[str | None, typer.Option(help="upstream.tool the grant covers", show_default=False)] = None,
    intent: Annotated[str | None, typer.Option(help="or: the intent whose calls it covers", show_default=False)] = None,
    minutes: Annotated[int, typer.Option(help="how long it lasts (at most review.max_grant_seconds)")] = 15,
    overrides_approval: Annotated[bool, typer.Option(
        "--overrides-approval", help="also let through steps that need a reviewer's approval")] = False,
    reviewer: ReviewerOption = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Grant a time-boxed break-glass exception to one agent.

    The agent's calls to the tool (or to the tools of the intent's steps), each under a real step
    of its task's intent, go through where the workflow or the policy would refuse them, each one
    flagged; the grant needs a sign-off afterwards.  A step that needs approval stays held unless
    --overrides-approval.
    """
    from pydantic import ValidationError

    from ..review.models import GrantCreate

    cfg = config_or_exit(config)
    try:
        request = GrantCreate(agent=agent, tool=tool, intent=intent, reason=reason, duration_seconds=minutes * 60,
                              overrides_approval=overrides_approval)
    except ValidationError as exc:
        raise _fail("; ".join(e["msg"] for e in exc.errors())) from None
    try:
        made = _with_service(cfg, lambda s: s.create_grant(request, reviewer=_reviewer(reviewer)))
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        _print_json(made)
        return
    console.print(f"grant {made.id} for {made.agent} on {made.tool or 'intent ' + str(made.intent)} "
                  f"until {_when(made.expires_at)} UTC; every use is flagged for review", highlight=False)


def grants(
    needs_review: Annotated[bool, typer.Option("--needs-review", help="only grants not signed off yet")] = False,
    active: Annotated[bool, typer.Option("--active", help="only grants usable now")] = False,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """List break-glass grants, newest first."""
    cfg = config_or_exit(config)
    found = _with_service(cfg, lambda s: s.grants(needs_review=needs_review, active=active))
    if as_json:
        _print_json(found)
        return
    table = Table(title="break-glass grants")
    for col in ("id", "agent", "covers", "uses", "active", "expires", "by", "signed off"):
        table.add_column(col, overflow="fold")
    for g in found:
        table.add_row(g.id, g.agent, g.tool or f"intent {g.intent}", str(g.uses), "yes" if g.active else "no",
                      _when(g.expires_at), g.created_by, g.signed_off_by or "[yellow]needs review[/yellow]")
    console.print(table)


def sign_off(
    grant_id: Annotated[str, typer.Argument(help="the grant id (grt_...)")],
    note: NoteOption = None, reviewer: ReviewerOption = None, config: ConfigOption = None,
) -> None:
    """Sign a grant off after reviewing its uses (removes it from the needs-review list)."""
    from ..store import GrantConflict

    cfg = config_or_exit(config)
    try:
        done = _with_service(cfg, lambda s: s.sign_off_grant(grant_id, reviewer=_reviewer(reviewer), note=note))
    except GrantConflict as exc:
        raise _fail(f"grant {grant_id}: {exc.why}", code=1) from None
    console.print(f"grant {done.id} signed off by {done.signed_off_by} ({done.uses} use(s))", highlight=False)


def revoke_grant(
    grant_id: Annotated[str, typer.Argument(help="the grant id (grt_...)")],
    reviewer: ReviewerOption = None, config: ConfigOption = None,
) -> None:
    """End a grant now; it can no longer be used."""
    from ..store import GrantConflict

    cfg = config_or_exit(config)
    try:
        done = _with_service(cfg, lambda s: s.revoke_grant(grant_id, reviewer=_reviewer(reviewer)))
    except GrantConflict as exc:
        raise _fail(f"grant {grant_id}: {exc.why}", code=1) from None
    console.print(f"grant {done.id} revoked by {done.revoked_by}", highlight=False)


# ----- replay ----------------------------------------------------------------------------
def replay(
    decision_id: Annotated[str | None, typer.Argument(help="one decision (default: all in the range)",
                                                      show_default=False)] = None,
    policy: Annotated[Path | None, typer.Option(help="candidate policy dir (default: the configured one)",
                                                exists=True, file_okay=False, show_default=False)] = None,
    intents: Annotated[Path | None, typer.Option(help="candidate intents dir (default: the configured one)",
                                                 exists=True, file_okay=False, show_default=False)] = None,
    since: SinceOption = None,
    until: Annotated[str | None, typer.Option(help="up to this time (RFC 3339 or an age)", show_default=False)] = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """What-if: which recorded outcomes would a candidate policy and intents change?

    Re-decides recorded decisions (nothing is written) and lists those whose outcome would
    change.  Exit status 1 when any would.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..review.models import ReplayRequest

    cfg = config_or_exit(config)
    request = ReplayRequest(
        decision_id=decision_id, policy_dir=str(policy) if policy else None, intents_dir=str(intents) if intents else None,
        since=parse_time(since) if since else None, until=parse_time(until) if until else None,
    )

    async def go(service: ReviewService):
        total = None if decision_id else await service.store.count_from(
            after_seq=0, upto_seq=await service.store.last_seq(), since=request.since.timestamp() if request.since else None)
        with Progress(TextColumn("replaying decisions"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err_console, transient=True, disable=as_json) as progress:
            bar = progress.add_task("replay", total=total)
            return await service.replay(request, progress=lambda n: progress.advance(bar, n))

    try:
        report = _with_service(cfg, go)
    except LookupError:
        raise _fail(f"no decision {decision_id}") from None
    except ConfigError as exc:
        raise _fail(exc.message) from None
    if as_json:
        sys.stdout.write(report.model_dump_json(indent=2) + "\n")
    else:
        _print_report(report)
    if report.transitions:
        raise typer.Exit(1)


def _print_report(report: ReplayReport) -> None:
    console.print(f"replayed {report.checked} decision(s) in {report.seconds:.2f}s "
                  f"({report.decisions_per_second:,.0f}/s): {report.unchanged} unchanged, "
                  f"{sum(report.skipped.values())} not replayable", highlight=False)
    for why, n in sorted(report.skipped.items()):
        console.print(f"  skipped {n}: {why}", style="dim", highlight=False)
    if not report.transitions:
        console.print("[green]no outcome would change[/green]")
        return
    summary = ", ".join(f"{t}: {n}" for t, n in sorted(report.transitions.items()))
    console.print(f"[bold yellow]would change[/bold yellow] {summary}", highlight=False)
    table = Table()
    for col in ("decision", "when", "agent", "tool", "step", "before", "after", "now because"):
        table.add_column(col, overflow="fold")
    for c in report.changes:
        table.add_row(c.decision_id, _when(c.at), c.agent, c.tool or "", c.step or "", c.before, c.after,
                      ", ".join(c.after_reasons))
    console.print(table)


def register_actions(app: typer.Typer) -> None:
    app.command()(approvals)
    app.command()(approve)
    app.command()(reject)
    app.command()(grant)
    app.command()(grants)
    app.command("sign-off")(sign_off)
    app.command("revoke-grant")(revoke_grant)
    app.command()(replay)
