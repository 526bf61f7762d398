"""Templates and what every page shares: the nav bar, formatting, reason codes in plain words,
security headers.  Autoescape is on for every template; nothing user-supplied is marked safe."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse
from pydantic import ValidationError

from ..errors import GatewayError, ReasonCode, reason_code_of
from ..policy import ReasonNote
from ..review import IntentGraph, ReviewService
from .session import Session

__all__ = ["REASON_TEXT", "STATIC_DIR", "csrf_refused", "form_errors", "reason_note", "reason_text", "render",
           "service_of", "unavailable"]

log = logging.getLogger("intentgate.ui")

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"

# What each reason code means, for someone who has not read the README.
REASON_TEXT: dict[ReasonCode, str] = {
    ReasonCode.UNAUTHENTICATED: "The caller had no valid workload token.",
    ReasonCode.MALFORMED_REQUEST: "The request was malformed (e.g. arguments that are not canonical JSON).",
    ReasonCode.PAYLOAD_TOO_LARGE: "The request was larger than the gateway accepts.",
    ReasonCode.UNKNOWN_TOOL: "No upstream offers a tool by that name.",
    ReasonCode.RATE_LIMITED: "The agent called more often than the gateway allows; it must slow down.",
    ReasonCode.UNKNOWN_RESOURCE: "No upstream offers that resource.",
    ReasonCode.UNKNOWN_PROMPT: "No upstream offers that prompt.",
    ReasonCode.UNKNOWN_INTENT: "No intent by that name is loaded.",
    ReasonCode.AGENT_NOT_PERMITTED: "This agent may not declare that intent.",
    ReasonCode.INVALID_PARAMS: "The task's parameters do not match what the intent declares.",
    ReasonCode.UNKNOWN_TASK: "The call named a task the gateway does not know.",
    ReasonCode.TASK_NOT_OWNED: "The task belongs to another agent.",
    ReasonCode.TASK_EXPIRED: "The task had expired; the agent must begin a new one.",
    ReasonCode.TASK_ENDED: "The task had already ended or failed.",
    ReasonCode.MISSING_TASK_CONTEXT: "The call named no task or step.",
    ReasonCode.TASK_ISSUER_REQUIRED: "Only a task issuer may begin this intent; the agent tried to begin it itself.",
    ReasonCode.ISSUER_NOT_PERMITTED: "The task issuer may not begin this intent (or not for this agent).",
    ReasonCode.INVALID_TASK_GRANT: "The task grant was malformed, badly signed or from an untrusted issuer.",
    ReasonCode.TASK_GRANT_EXPIRED: "The task grant had expired.",
    ReasonCode.TASK_GRANT_AGENT: "The task grant was presented by an agent other than the one it names.",
    ReasonCode.TASK_GRANT_REPLAYED: "The task grant had already begun a task.",
    ReasonCode.UNKNOWN_STEP: "The intent has no step by that name.",
    ReasonCode.STEP_OUT_OF_ORDER: "The step is not reachable from the steps the task has taken so far.",
    ReasonCode.TOOL_MISMATCH: "The tool called is not the tool this step allows.",
    ReasonCode.MAX_CALLS_EXCEEDED: "The step was already called as often as the intent allows.",
    ReasonCode.ARGUMENT_CONSTRAINT: "An argument is outside the step's constraints.",
    ReasonCode.ARGUMENT_MISSING: "A required argument was missing.",
    ReasonCode.ARGUMENT_NOT_ALLOWED: "An argument the step does not declare was passed.",
    ReasonCode.BINDING_MISMATCH: "An argument differs from the value the task is bound to (e.g. another order).",
    ReasonCode.BINDING_UNRESOLVED: "An argument is bound to a step the task has not taken yet.",
    ReasonCode.CONCURRENT_STEP: "Another call on the same task was being decided at the same time.",
    ReasonCode.BUDGET_EXCEEDED: "The call would spend more of a budget than is left in its window.",
    ReasonCode.POLICY: "The Rego policy gave this reason.",
    ReasonCode.POLICY_DENIED: "The Rego policy denied the call.",
    ReasonCode.POLICY_ERROR: "The policy could not be evaluated, so the call was denied.",
    ReasonCode.APPROVAL_REQUIRED: "The step needs a reviewer's approval before it may run.",
    ReasonCode.POLICY_HOLD: "The policy held the call for a reviewer's approval.",
    ReasonCode.APPROVED: "A reviewer approved this exact call.",
    ReasonCode.BREAK_GLASS: "Let through by a break-glass grant; flagged for post-hoc review.",
    ReasonCode.INVALID_TOKEN: "The action token was invalid.",
    ReasonCode.TOKEN_EXPIRED: "The action token had expired.",
    ReasonCode.TOKEN_NOT_YET_VALID: "The action token was not valid yet.",
    ReasonCode.TOKEN_AUDIENCE: "The action token was for another upstream.",
    ReasonCode.TOKEN_TOOL: "The action token was for another tool.",
    ReasonCode.TOKEN_ARGUMENTS: "The arguments differ from the ones the action token was minted for.",
    ReasonCode.TOKEN_REPLAYED: "The action token had already been used.",
    ReasonCode.TOKEN_REVOKED: "The action token had been revoked.",
    ReasonCode.REDEEMER_NOT_PERMITTED: "The tool server may not redeem action tokens for this upstream.",
    ReasonCode.UPSTREAM_ERROR: "The upstream tool server failed.",
    ReasonCode.UPSTREAM_TIMEOUT: "The upstream tool server did not answer in time.",
    ReasonCode.UPSTREAM_RESULT_TOO_LARGE: "The upstream's result was larger than the gateway passes on; it was not forwarded.",
    ReasonCode.ASK_UNATTRIBUTED: "The upstream asked the agent's client for something while no single call of "
                                 "its could own the request.",
    ReasonCode.ASK_UNSUPPORTED: "The agent's client cannot take that request (it did not declare the capability, "
                                "or its connection has no way back).",
    ReasonCode.INPUT_CONTINUATION: "The agent answered what the tool asked and the call went on, under the decision "
                                   "named (not a new workflow step).",
    ReasonCode.REQUEST_STATE_INVALID: "The request state the agent sent back was not one this gateway sealed, or "
                                      "was altered.",
    ReasonCode.REQUEST_STATE_EXPIRED: "The request state the agent sent back had expired.",
    ReasonCode.REQUEST_STATE_MISMATCH: "The request state was sealed for another agent, tool, task or arguments.",
    ReasonCode.REQUEST_STATE_REPLAYED: "The request state had already been used to continue its call.",
    ReasonCode.INPUT_RESPONSE_UNASKED: "The agent sent an answer to something the tool had not asked (or of "
                                       "another kind).",
    ReasonCode.SESSION_NOT_OWNED: "The MCP session was opened by another agent.",
    ReasonCode.SESSION_LIMIT: "The agent has too many MCP sessions open, or opened them too fast.",
    ReasonCode.STORE_ERROR: "The gateway's database failed, so the call was denied.",
    ReasonCode.INTERNAL_ERROR: "An internal error occurred, so the call was denied (fail closed).",
}

OUTCOME_TEXT = {"allow": "allowed", "deny": "denied", "hold": "held for approval", "would_deny": "would deny (shadow)"}


def reason_note(reason: str, notes: Mapping[str, ReasonNote] | None = None) -> ReasonNote | None:
    """What the policy's own METADATA says of a reason it gave (``policy:<its reason>``), if anything."""
    code, _, detail = reason.partition(":")
    return notes.get(detail) if notes and code == ReasonCode.POLICY.value else None


def reason_text(reason: str, notes: Mapping[str, ReasonNote] | None = None) -> str:
    """One reason (``code`` or ``code:detail``) in plain words: for a Rego reason, the title and
    description of the rule that gave it, where ``notes`` (the policy's annotations) have them."""
    if note := reason_note(reason, notes):
        return ": ".join(part for part in (note.title, note.description) if part)
    try:
        text = REASON_TEXT[reason_code_of(reason)]
    except (ValueError, KeyError):
        return ""
    detail = reason.partition(":")[2]
    return f"{text} ({detail})" if detail else text


def form_errors(exc: ValidationError, labels: dict[str, str]) -> list[str]:
    """A form's validation errors in words a reviewer can act on, each named by its field's label
    (``labels``: field name -> label), instead of pydantic's own messages."""
    out = []
    for e in exc.errors():
        name = str(e["loc"][0]) if e["loc"] else ""
        kind, given = e["type"], e.get("input")
        ctx = e.get("ctx", {})
        if kind.startswith(("datetime", "date_", "time_")):
            message = (f"“{given}” is not a date and time: use e.g. 2027-01-04T10:30 or 2027-01-04T10:30:00Z "
                       "(UTC unless it has an offset such as +02:00)")
        elif kind == "literal_error":
            message = f"“{given}” is not one of {ctx.get('expected', 'the choices')}"
        elif kind == "value_error":
            message = str(ctx.get("error", e["msg"]))
        elif kind == "string_too_long":
            message = f"at most {ctx.get('max_length')} characters"
        else:
            message = e["msg"]
        label = labels.get(name, name)
        out.append(f"{label}: {message}" if label else message[:1].upper() + message[1:])
    return out


def _when(value: datetime | float | None) -> str:
    if value is None:
        return ""
    if not isinstance(value, datetime):
        value = datetime.fromtimestamp(value, tz=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters.update(when=_when, pretty=_pretty, reason_text=reason_text, reason_note=reason_note)
_env.globals.update(outcome_text=OUTCOME_TEXT)

def intent_svg(graph: IntentGraph) -> str:
    """An intent's graph as a standalone SVG document (the decision page's drawing, with the
    UI's graph styles inlined): ``intentgate graph --format svg``."""
    from .graph import layout

    css = (HERE / "static" / "style.css").read_text(encoding="utf-8")
    root = css[css.index(":root"): css.index("}", css.index(":root")) + 1]
    rules = [line for line in css.splitlines() if line.startswith("svg.graph")]
    return _env.get_template("intent_graph.svg").render(
        g=layout(graph, ""), title=f"Intent {graph.intent} v{graph.version}", style="\n".join([root, *rules]),
    )


_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def service_of(request: Request) -> ReviewService:
    return request.app.state.review


async def render(
    request: Request, template: str, session: Session | None, status_code: int = 200, **context: Any
) -> HTMLResponse:
    """A full page: ``template`` inside the layout, with the nav bar when signed in."""
    pending: int | None = None
    if session is not None:
        try:
            pending = len(await service_of(request).approvals(status="pending"))
        except GatewayError as exc:
            log.error("ui: approvals count failed: %s", exc.message)
    runtime = getattr(request.app.state, "runtime", None)
    html = _env.get_template(template).render(
        request=request, session=session, pending=pending, path=request.url.path,
        reason_notes=runtime.policy.reason_notes if runtime is not None else {}, **context
    )
    return HTMLResponse(html, status_code=status_code, headers=_HEADERS)


async def csrf_refused(request: Request, session: Session) -> HTMLResponse:
    log.warning("ui: form without a valid CSRF token from %s", session.reviewer.id)
    return await render(request, "error.html", session, status_code=403, title="Form refused",
                        message="This form was stale or did not come from this page. Reload the page and try again.")


async def unavailable(request: Request, session: Session | None, exc: GatewayError) -> HTMLResponse:
    log.error("ui: reviewer query failed: %s", exc.message)
    return await render(request, "error.html", session, status_code=503, title="Store unavailable",
                        message="The decision store is unavailable right now. Try again in a moment.")
