"""Reviewer commands: ``admin-token``, ``decisions``, ``show`` and ``audit export``.

They read the database named by the config directly (no running gateway needed), through
the same :class:`~intentgate.review.ReviewService` and public models as the REST API, so the
CLI's ``--json`` is the API's JSON.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..errors import GatewayError
from .common import ConfigOption, config_or_exit, console, database_or_exit, err_console, record_action, run

if TYPE_CHECKING:
    from ..config import GatewayConfig
    from ..intents import IntentRegistry
    from ..review import DecisionDetail, DecisionSummary, ReviewService

__all__ = ["register_review"]

T = TypeVar("T")
_OUTCOME_STYLE = {"allow": "green", "deny": "red", "hold": "yellow", "would_deny": "magenta"}
_AGO = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

SinceOption = Annotated[
    str | None,
    typer.Option(help="from this time: RFC 3339 (2027-01-04T10:00:00Z) or an age (90s, 15m, 24h, 7d)",
                 show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON (the REST API's shape) instead of tables")]


def _fail(message: str, code: int = 2) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(code)


def parse_time(text: str, *, now: float | None = None) -> datetime:
    """An RFC 3339 time (UTC if no offset) or an age such as ``24h`` (that long before now)."""
    m = _AGO.match(text.strip().lower())
    if m:
        ago = int(m[1]) * _UNITS[m[2]]
        return datetime.fromtimestamp((time.time() if now is None else now) - ago, tz=UTC)
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise _fail(f"{text!r} is neither an RFC 3339 time nor an age like 24h") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _with_service(cfg: GatewayConfig, fn: Callable[[ReviewService], Coroutine[Any, Any, T]]) -> T:
    from ..intents import load_intents
    from ..review import ReviewService

    def intents() -> IntentRegistry | None:
        try:
            return load_intents(cfg.intents_dir, default_begin=cfg.tasks.begin)
        except GatewayError as exc:
            err_console.print(f"[yellow]intents not loaded, no graph: {exc.message.splitlines()[0]}[/yellow]")
            return None

    database_or_exit(cfg)
    try:
        service = ReviewService.open(cfg, intents, with_auth=False)
    except GatewayError as exc:
        raise _fail(exc.message) from exc
    try:
        return run(fn(service))
    finally:
        service.close()


def _when(value: datetime | float | None) -> str:
    """A time as RFC 3339 in UTC, to the second (``2026-12-01T14:05:09Z``)."""
    if value is None:
        return ""
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, tz=UTC)
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


# ----- admin-token -------------------------------------------------------------------------
def admin_token(
    reviewer: Annotated[str, typer.Option(help="the reviewer's name (the token's sub)")] = "admin",
    ttl: Annotated[str, typer.Option(help="lifetime: seconds, or 90s, 15m, 8h, 7d (at most 7 days)")] = "8h",
    config: ConfigOption = None,
) -> None:
    """Mint a reviewer admin token for the REST API (prints the JWT).

    Signed with the gateway's admin key (<data_dir>/keys/admin), never usable as an agent token.
    """
    from ..keys import KeySet
    from ..review import AdminTokenIssuer

    cfg = config_or_exit(config)
    if not cfg.review.admin_tokens:
        raise _fail("admin tokens are disabled (review.admin_tokens: false)")
    text = ttl.strip().lower()
    m = _AGO.match(text)
    try:
        seconds = int(m[1]) * _UNITS[m[2]] if m else int(text)
        token = AdminTokenIssuer(KeySet.open_or_create(cfg.admin_keys_dir)).mint(reviewer, seconds)
    except (GatewayError, ValueError) as exc:
        raise _fail(getattr(exc, "message", f"bad ttl {ttl!r}")) from exc
    import jwt

    claims = jwt.decode(token, options={"verify_signature": False})  # our own token: what to record of it
    record_action(cfg, "admin/token", actor="", subject={
        "sub": claims.get("sub"), "jti": claims.get("jti"), "exp": claims.get("exp"), "iat": claims.get("iat")})
    print(token)


# ----- decisions ---------------------------------------------------------------------------
def decisions(
    outcome: Annotated[str | None, typer.Option(help="allow, deny, hold or would_deny", show_default=False)] = None,
    agent: Annotated[str | None, typer.Option(help="agent id", show_default=False)] = None,
    intent: Annotated[str | None, typer.Option(help="intent name", show_default=False)] = None,
    tool: Annotated[str | None, typer.Option(help="upstream.tool", show_default=False)] = None,
    reason: Annotated[
        str | None, typer.Option(help="reason code (or one full code:detail reason)", show_default=False)
    ] = None,
    kind: Annotated[str | None, typer.Option(help="decision kind, e.g. tools/call", show_default=False)] = None,
    q: Annotated[str | None, typer.Option("--search", "-q", help="text in id, agent, tool, intent, task or reasons",
                                          show_default=False)] = None,
    since: SinceOption = None,
    until: Annotated[str | None, typer.Option(help="before this time (RFC 3339 or an age)", show_default=False)] = None,
    before: Annotated[int | None, typer.Option(help="page key: decisions older than this seq", show_default=False)] = None,
    limit: Annotated[int, typer.Option(help="at most this many (1-500)")] = 50,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """List decisions, newest first, filtered (every filter narrows the list)."""
    from pydantic import ValidationError

    from ..review import DecisionQuery

    cfg = config_or_exit(config)
    try:
        query = DecisionQuery(
            outcome=outcome, agent=agent, intent=intent, tool=tool, reason=reason, kind=kind, q=q,  # type: ignore[arg-type]
            since=parse_time(since) if since else None, until=parse_time(until) if until else None,
            before=before, limit=limit,
        )
    except ValidationError as exc:
        raise _fail("; ".join(f"--{e['loc'][0]}: {e['msg']}" for e in exc.errors())) from exc
    page = _with_service(cfg, lambda s: s.search(query))
    if as_json:
        sys.stdout.write(page.model_dump_json(indent=2) + "\n")
        return
    console.print(_decision_table(page.items))
    if page.next_before is not None:
        console.print(f"more: --before {page.next_before}", style="dim", highlight=False)


def _decision_table(items: list[DecisionSummary]) -> Table:
    table = Table("seq", "time (UTC)", "outcome", "agent", "intent", "step", "tool", "reasons", "id",
                  title=f"{len(items)} decision(s)", title_justify="left")
    for d in items:
        table.add_row(
            str(d.seq), _when(d.at), Text(d.outcome, style=_OUTCOME_STYLE.get(d.outcome, "")), d.agent,
            d.intent or "", d.step or "", d.tool or d.kind, "\n".join(d.reasons), d.id,
        )
    return table


# ----- show --------------------------------------------------------------------------------
def show(
    decision_id: Annotated[str, typer.Argument(metavar="ID", help="decision id (dec_...)")],
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Show one decision in full: verdict and why, the workflow graph with the task's path,
    the task, the token, the call's outcome, and the policy input and result."""
    cfg = config_or_exit(config)
    detail = _with_service(cfg, lambda s: s.detail(decision_id))
    if detail is None:
        raise _fail(f"no decision {decision_id!r}", code=1)
    if as_json:
        sys.stdout.write(detail.model_dump_json(indent=2) + "\n")
        return
    for panel in _detail_panels(detail):
        console.print(panel)


def _detail_panels(detail: DecisionDetail) -> list[Panel]:
    from rich.syntax import Syntax  # pygments: only for a decision's policy input

    d = detail.decision
    style = _OUTCOME_STYLE.get(d.outcome, "")
    facts = Table.grid(padding=(0, 2))
    for name, value in [
        ("outcome", Text(d.outcome.upper(), style=f"bold {style}")), ("why", detail.explanation),
        ("reasons", ", ".join(d.reasons) or "-"), ("at", d.at.isoformat()), ("kind", d.kind), ("agent", d.agent),
        ("intent", f"{d.intent or '-'} (version {d.intent_version or '-'})"), ("task", d.task_id or "-"),
        ("step", d.step or "-"), ("tool", d.tool or "-"), ("arguments sha256", d.arguments_sha256 or "-"),
        ("policy revision", d.policy_revision or "-"), ("seq / hash", f"{d.seq} / {d.hash[:16]}…"),
        ("timings (µs)", ", ".join(f"{k} {v}" for k, v in d.timings_us.items()) or "-"),
        ("masked", ", ".join(d.masked) or "-"),
    ]:
        facts.add_row(Text(name, style="bold"), value)
    panels = [Panel(facts, title=f"decision {d.id}", border_style=style or "white")]

    if detail.graph is not None:
        g = detail.graph
        graph = Table("step", "tool", "next", "taken", box=None, pad_edge=False)
        for s in g.steps:
            mark = "[bold red]→ attempted[/]" if s.attempted else ""
            name = f"{'▶ ' if s.start else '  '}{s.name}"
            graph.add_row(name, s.tool, ", ".join(s.next) or "(end)",
                          " ".join(f"#{i}" for i in s.taken) + (f" {mark}" if mark else ""))
        path = " → ".join(f"{p.step}{'*' if p.relation == 'this' else ''}" for p in g.path if p.relation != "after")
        lines = [graph, Text(f"path before this decision: {path or '(none)'}", style="dim"),
                 Text(f"allowed next then: {', '.join(g.allowed_next) or '(none)'}", style="dim")]
        if g.decided_version and g.decided_version != g.version:
            lines.append(Text(f"decided under version {g.decided_version}; graph is version {g.version}",
                              style="yellow"))
        panels.append(Panel(Group(*lines), title=f"intent {g.intent} (version {g.version})"))

    if detail.task is not None:
        t = detail.task
        body = Table.grid(padding=(0, 2))
        body.add_row(Text("status", style="bold"), t.status)
        body.add_row(Text("agent", style="bold"), t.agent)
        body.add_row(Text("begun by", style="bold"), f"task issuer {t.issuer}" if t.issuer else "the agent itself")
        body.add_row(Text("reason", style="bold"), t.reason)
        body.add_row(Text("params", style="bold"), json.dumps(t.params))
        body.add_row(Text("expires", style="bold"), t.expires_at.isoformat())
        body.add_row(Text("history", style="bold"),
                     "\n".join(f"{i}. {h.step} ({h.tool}) {h.decision_id}" for i, h in enumerate(t.history, 1))
                     or "-")
        panels.append(Panel(body, title=f"task {t.id}"))
    if detail.token is not None:
        tok = detail.token
        panels.append(Panel(f"{tok.status}; audience {tok.audience}; expires {tok.expires_at.isoformat()}",
                            title=f"token {tok.jti}"))
    if detail.call_outcome is not None:
        o = detail.call_outcome
        panels.append(Panel(f"{o.status} in {o.latency_ms:.1f} ms{': ' + o.detail if o.detail else ''}",
                            title="call outcome"))
    for a in detail.approvals:
        panels.append(Panel(f"{a.status}; expires {a.expires_at.isoformat()}"
                            + (f"; by {a.decided_by}" if a.decided_by else ""), title=f"approval {a.id}"))
    if d.policy_input is not None or d.policy_result is not None:
        doc = {"input": d.policy_input, "result": d.policy_result}
        panels.append(Panel(Syntax(json.dumps(doc, indent=2), "json", word_wrap=True), title="policy"))
    return panels


# ----- audit export ------------------------------------------------------------------------
def export(
    since: SinceOption = None,
    after_seq: Annotated[int, typer.Option(help="decisions after this seq", min=0)] = 0,
    out: Annotated[Path | None, typer.Option(help="write to this file (default: stdout)", show_default=False)] = None,
    config: ConfigOption = None,
) -> None:
    """Export decisions as JSON lines (one object per decision, stable field names), in seq order."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    cfg = config_or_exit(config)
    start = parse_time(since) if since else None

    async def go(service: ReviewService) -> int:
        upto, total = await service.export_bounds(since=start, after_seq=after_seq)
        written = 0
        if out is None:
            async for batch in service.export(since=start, after_seq=after_seq, upto_seq=upto):
                sys.stdout.write("".join(d.model_dump_json() + "\n" for d in batch))
                written += len(batch)
            sys.stdout.flush()
            return written
        tmp = out.with_name(f".{out.name}.part")
        with tmp.open("w", encoding="utf-8") as fh, Progress(
            TextColumn("exporting decisions"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=err_console, transient=True,
        ) as progress:
            bar = progress.add_task("export", total=total)
            async for batch in service.export(since=start, after_seq=after_seq, upto_seq=upto):
                fh.write("".join(d.model_dump_json() + "\n" for d in batch))
                written += len(batch)
                progress.advance(bar, len(batch))
        tmp.replace(out)
        return written

    try:
        written = _with_service(cfg, go)
    except OSError as exc:
        raise _fail(f"cannot write {out}: {exc.strerror or exc}") from exc
    if out is not None:
        err_console.print(f"exported {written} decision(s) to {out}", highlight=False)


def register_review(app: typer.Typer, audit_app: typer.Typer) -> None:
    app.command("admin-token")(admin_token)
    app.command()(decisions)
    app.command()(show)
    audit_app.command("export")(export)
