"""Reading pages: login/logout, the denials inbox and one decision."""

from __future__ import annotations

import logging
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Path, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from pydantic import ValidationError

from ..errors import GatewayError, ReasonCode
from ..review import DecisionQuery, ReviewerDenied
from ..store.ledger import REVIEW_KINDS
from .graph import layout
from .render import STATIC_DIR, csrf_refused, render, service_of, unavailable
from .session import SessionDep, csrf_ok, safe_next, sign_in, sign_out, verify

__all__ = ["router"]

log = logging.getLogger("intentgate.ui")

router = APIRouter(prefix="/ui", include_in_schema=False)

KINDS = ("tools/call", "task/begin", "task/end", "task/expire", "resources/read", "prompts/get", "token/redeem",
         *REVIEW_KINDS)
FILTERS = ("outcome", "agent", "intent", "tool", "reason", "kind", "since", "until", "q")
OUTCOMES = [("deny", "denied"), ("hold", "held"), ("would_deny", "would deny (shadow)"), ("allow", "allowed"),
            ("any", "any outcome")]
_REFUSED = {
    401: "That is not a valid reviewer token: it may be expired, mistyped, or from an issuer this gateway "
         "does not trust. Create one with `intentgate admin-token`.",
    403: "That credential does not grant reviewer access: an agent's workload token (or a token without the "
         "reviewer role) can never be used here. Use a reviewer token from `intentgate admin-token` or your "
         "identity provider.",
}


@router.get("/static/style.css")
async def stylesheet() -> FileResponse:
    return FileResponse(STATIC_DIR / "style.css", media_type="text/css", headers={"Cache-Control": "max-age=300"})


@router.get("")
async def home() -> RedirectResponse:
    return RedirectResponse("/ui/decisions", status_code=303)


@router.get("/login")
async def login_page(request: Request, next: str = "", signed_out: str = "") -> Response:
    return await render(request, "login.html", None, title="Sign in", next=safe_next(next), message=None,
                        notice="You are signed out." if signed_out else None)


@router.post("/login")
async def login(request: Request, token: Annotated[str, Form(max_length=16384)] = "",
                next: Annotated[str, Form(max_length=2048)] = "") -> Response:
    token = token.strip()
    if token.lower().startswith("bearer "):
        token = token[7:].strip()
    try:
        reviewer = verify(service_of(request), token)
    except ReviewerDenied as exc:
        log.info("ui login refused (%d): %s", exc.status, exc.message)
        message = "Paste a reviewer token." if not token else _REFUSED[exc.status]
        return await render(request, "login.html", None, status_code=exc.status, title="Sign in",
                            next=safe_next(next), message=message, notice=None)
    log.info("ui login by %s (%s)", reviewer.id, reviewer.via)
    return sign_in(request, token, next)


@router.post("/logout")
async def logout(request: Request, session: SessionDep, csrf: Annotated[str, Form()] = "") -> Response:
    if not csrf_ok(session, csrf):
        return await csrf_refused(request, session)
    return sign_out(request)


@router.get("/decisions")
async def inbox(request: Request, session: SessionDep,
                before: Annotated[int | None, Query(ge=1)] = None,
                limit: Annotated[int, Query(ge=1, le=500)] = 50) -> Response:
    """The denials inbox: ``GET /v1/decisions``'s filters as a form (outcome defaults to deny)."""
    raw = {k: request.query_params.get(k, "").strip() for k in FILTERS}
    if "outcome" not in request.query_params:
        raw["outcome"] = "deny"
    given = {k: v for k, v in raw.items() if v and not (k == "outcome" and v == "any")}
    errors: list[str] = []
    page = None
    try:
        query = DecisionQuery(**given, before=before, limit=limit)
    except ValidationError as exc:
        errors = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
    else:
        try:
            page = await service_of(request).search(query)
        except GatewayError as exc:
            return await unavailable(request, session, exc)
    keep: dict[str, str | int] = {k: v for k, v in raw.items() if v}
    if limit != 50:
        keep["limit"] = limit
    older = f"/ui/decisions?{urlencode({**keep, 'before': page.next_before})}" if page and page.next_before else None
    newest = f"/ui/decisions?{urlencode(keep)}" if before else None
    registry = request.app.state.runtime.decider.intents
    return await render(
        request, "inbox.html", session, status_code=422 if errors else 200, title="Decisions", filters=raw,
        outcomes=OUTCOMES, page=page, errors=errors, older=older, newest=newest,
        reason_codes=[c.value for c in ReasonCode], intents=registry.names() if registry else [],
        kinds=KINDS,
    )


@router.get("/decisions/{decision_id}")
async def decision(request: Request, session: SessionDep,
                   decision_id: Annotated[str, Path(max_length=40)]) -> Response:
    """One decision: why in plain words, the graph, the task, token, outcome and raw record."""
    try:
        detail = await service_of(request).detail(decision_id)
    except GatewayError as exc:
        return await unavailable(request, session, exc)
    if detail is None:
        return await render(request, "error.html", session, status_code=404, title="Not found",
                            message=f"There is no decision {decision_id}.")
    graph = layout(detail.graph, detail.decision.outcome) if detail.graph else None
    return await render(request, "decision.html", session, title=f"Decision {detail.decision.id}", d=detail,
                        rec=detail.decision, graph=graph)
