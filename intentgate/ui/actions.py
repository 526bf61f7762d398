"""Pages that act: the approvals queue, break-glass grants and what-if replay.

Every change is a POST whose form carries the session's CSRF token; the work is done by the
same :class:`~intentgate.review.ReviewService` methods as the REST API's.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, Path, Query, Request
from fastapi.responses import Response
from pydantic import ValidationError

from ..errors import ConfigError, GatewayError
from ..review.models import GrantCreate, ReplayRequest
from ..store import ApprovalConflict, GrantConflict
from .render import csrf_refused, render, service_of, unavailable
from .session import Session, SessionDep, csrf_ok

__all__ = ["router"]

log = logging.getLogger("intentgate.ui")

router = APIRouter(prefix="/ui", include_in_schema=False)

Id = Annotated[str, Path(max_length=40)]
Note = Annotated[str, Form(max_length=2000)]
Csrf = Annotated[str, Form()]


def _errors(exc: ValidationError) -> list[str]:
    return [(f"{'.'.join(str(p) for p in e['loc'])}: " if e["loc"] else "") + e["msg"] for e in exc.errors()]


# ----- approvals ---------------------------------------------------------------------
async def _approvals_page(request: Request, session: Session, status: str = "pending", code: int = 200,
                          result: str | None = None, error: str | None = None) -> Response:
    try:
        approvals = await service_of(request).approvals(status=None if status == "any" else status)
    except GatewayError as exc:
        return await unavailable(request, session, exc)
    return await render(request, "approvals.html", session, status_code=code, title="Approvals",
                        approvals=approvals, status=status, result=result, error=error)


@router.get("/approvals")
async def approvals(request: Request, session: SessionDep,
                    status: Literal["pending", "approved", "rejected", "used", "any"] = "pending") -> Response:
    return await _approvals_page(request, session, status)


@router.post("/approvals/{approval_id}/{action}")
async def decide(request: Request, session: SessionDep, approval_id: Id, action: Literal["approve", "reject"],
                 csrf: Csrf = "", note: Note = "") -> Response:
    if not csrf_ok(session, csrf):
        return await csrf_refused(request, session)
    approve = action == "approve"
    try:
        decided = await service_of(request).decide_approval(
            approval_id, approve=approve, reviewer=session.reviewer, note=note.strip() or None
        )
    except ApprovalConflict as exc:
        why = "there is no such approval" if exc.why == "unknown" else f"it is {exc.why}"
        return await _approvals_page(request, session, code=404 if exc.why == "unknown" else 409,
                                     error=f"Could not {action} {approval_id}: {why}.")
    except GatewayError as exc:
        return await unavailable(request, session, exc)
    log.info("approval %s %s by %s (ui)", approval_id, decided.status, session.reviewer.id)
    if approve:
        result = (f"Approved {decided.id}. The agent's identical retry (same task, step and arguments) "
                  "will be allowed once.")
    else:
        result = f"Rejected {decided.id}. The call stays refused."
    return await _approvals_page(request, session, result=result)


# ----- break-glass grants ------------------------------------------------------------
async def _grants_page(request: Request, session: Session, *, needs_review: bool = False, active: bool = False,
                       code: int = 200, result: str | None = None, errors: list[str] | None = None,
                       form: dict[str, Any] | None = None) -> Response:
    service = service_of(request)
    try:
        grants = await service.grants(needs_review=needs_review, active=active)
    except GatewayError as exc:
        return await unavailable(request, session, exc)
    return await render(
        request, "grants.html", session, status_code=code, title="Break-glass grants", grants=grants,
        needs_review=needs_review, active=active, result=result, errors=errors or [],
        form=form or {"agent": "", "tool": "", "intent": "", "reason": "", "minutes": 15},
        max_minutes=service.config.review.max_grant_seconds // 60,
    )


@router.get("/grants")
async def grants(request: Request, session: SessionDep, needs_review: Annotated[bool, Query()] = False,
                 active: Annotated[bool, Query()] = False) -> Response:
    return await _grants_page(request, session, needs_review=needs_review, active=active)


@router.post("/grants")
async def create_grant(
    request: Request, session: SessionDep, csrf: Csrf = "",
    agent: Annotated[str, Form(max_length=512)] = "", tool: Annotated[str, Form(max_length=300)] = "",
    intent: Annotated[str, Form(max_length=64)] = "", reason: Annotated[str, Form(max_length=2000)] = "",
    minutes: Annotated[str, Form(max_length=12)] = "15",
) -> Response:
    if not csrf_ok(session, csrf):
        return await csrf_refused(request, session)
    form = {"agent": agent, "tool": tool, "intent": intent, "reason": reason, "minutes": minutes}
    try:
        body = GrantCreate(agent=agent.strip(), tool=tool.strip() or None, intent=intent.strip() or None,
                           reason=reason.strip(), duration_seconds=int(minutes) * 60)
        grant = await service_of(request).create_grant(body, reviewer=session.reviewer)
    except ValidationError as exc:
        return await _grants_page(request, session, code=422, errors=_errors(exc), form=form)
    except ValueError as exc:  # a bad number of minutes, or longer than review.max_grant_seconds
        message = "minutes: give a whole number" if "int()" in str(exc) else str(exc)
        return await _grants_page(request, session, code=422, errors=[message], form=form)
    except GatewayError as exc:
        return await unavailable(request, session, exc)
    log.warning("break-glass grant %s for %s on %s by %s (ui): %s", grant.id, grant.agent,
                grant.tool or grant.intent, session.reviewer.id, grant.reason)
    return await _grants_page(request, session, code=201, result=(
        f"Granted {grant.id}: {grant.agent} may use {grant.tool or 'intent ' + str(grant.intent)} until "
        f"{grant.expires_at:%Y-%m-%d %H:%M:%SZ}. Every use is flagged for review."))


@router.post("/grants/{grant_id}/{action}")
async def grant_action(request: Request, session: SessionDep, grant_id: Id, action: Literal["sign-off", "revoke"],
                       csrf: Csrf = "", note: Note = "") -> Response:
    if not csrf_ok(session, csrf):
        return await csrf_refused(request, session)
    service = service_of(request)
    try:
        if action == "sign-off":
            await service.sign_off_grant(grant_id, reviewer=session.reviewer, note=note.strip() or None)
            result = f"Signed off {grant_id}."
        else:
            await service.revoke_grant(grant_id, reviewer=session.reviewer)
            result = f"Revoked {grant_id}: it can no longer be used."
    except GrantConflict as exc:
        why = "there is no such grant" if exc.why == "unknown" else f"it is {exc.why}"
        return await _grants_page(request, session, code=404 if exc.why == "unknown" else 409,
                                  errors=[f"Could not {action.replace('-', ' ')} {grant_id}: {why}."])
    except GatewayError as exc:
        return await unavailable(request, session, exc)
    log.info("grant %s %s by %s (ui)", grant_id, action, session.reviewer.id)
    return await _grants_page(request, session, result=result)


# ----- what-if replay ----------------------------------------------------------------
def _replay_form(request: Request, **given: str) -> dict[str, str]:
    config = service_of(request).config
    form = {"decision_id": "", "since": "", "until": "", "policy_dir": str(config.policy_dir),
            "intents_dir": str(config.intents_dir)}
    form.update({k: v for k, v in given.items() if k in form})
    return form


@router.get("/replay")
async def replay_page(request: Request, session: SessionDep,
                      decision_id: Annotated[str, Query(max_length=40)] = "") -> Response:
    return await render(request, "replay.html", session, title="Replay", form=_replay_form(request,
                        decision_id=decision_id), report=None, errors=[])


@router.post("/replay")
async def replay(
    request: Request, session: SessionDep, csrf: Csrf = "",
    decision_id: Annotated[str, Form(max_length=40)] = "", since: Annotated[str, Form(max_length=40)] = "",
    until: Annotated[str, Form(max_length=40)] = "", policy_dir: Annotated[str, Form(max_length=4096)] = "",
    intents_dir: Annotated[str, Form(max_length=4096)] = "",
) -> Response:
    if not csrf_ok(session, csrf):
        return await csrf_refused(request, session)
    form = _replay_form(request, decision_id=decision_id, since=since, until=until, policy_dir=policy_dir,
                        intents_dir=intents_dir)
    code, errors, report = 200, [], None
    try:
        body = ReplayRequest(**{k: v.strip() for k, v in form.items() if v.strip()})
        report = await service_of(request).replay(body)
    except ValidationError as exc:
        code, errors = 422, _errors(exc)
    except LookupError:
        code, errors = 404, [f"There is no decision {decision_id}."]
    except ConfigError as exc:
        code, errors = 422, [exc.message]
    except GatewayError as exc:
        return await unavailable(request, session, exc)
    if report is not None:
        log.info("replay by %s (ui): %d checked, %s", session.reviewer.id, report.checked, report.transitions)
    return await render(request, "replay.html", session, status_code=code, title="Replay", form=form,
                        report=report, errors=errors)
