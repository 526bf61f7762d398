"""Reading pages: login/logout, the denials inbox (and its filtered NDJSON export) and one decision."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Path, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse
from pydantic import ValidationError

from ..errors import GatewayError, ReasonCode
from ..review import DecisionQuery, ReviewerDenied
from ..review.overview import RANGES
from ..store.ledger import REVIEW_KINDS
from .graph import layout
from .render import STATIC_DIR, csrf_refused, form_errors, render, service_of, unavailable
from .session import SessionDep, csrf_ok, safe_next, sign_in, sign_out, verify

__all__ = ["router"]

log = logging.getLogger("intentgate.ui")

router = APIRouter(prefix="/ui", include_in_schema=False)

KINDS = ("tools/call", "task/begin", "task/end", "task/expire", "resources/read", "prompts/get", "token/redeem",
         *REVIEW_KINDS)
FILTERS = ("outcome", "agent", "intent", "tool", "reason", "kind", "since", "until", "q")
LABELS = {"outcome": "Outcome", "agent": "Agent", "intent": "Intent", "tool": "Tool", "reason": "Reason",
          "kind": "Kind", "since": "From", "until": "Until", "q": "Search", "range": "Last"}
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


def _filters(request: Request) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """The inbox's filters as typed (outcome defaults to deny), the ones that narrow, and what
    is wrong with them.  ``last`` (1h … 30d) stands for ``since`` = that long ago when no
    ``since`` is given."""
    raw = {k: request.query_params.get(k, "").strip() for k in (*FILTERS, "last")}
    if "outcome" not in request.query_params:
        raw["outcome"] = "deny"
    given = {k: v for k, v in raw.items() if v and k != "last" and not (k == "outcome" and v == "any")}
    errors: list[str] = []
    if raw["last"] and raw["last"] not in RANGES:
        errors.append(f"{LABELS['range']}: “{raw['last']}” is not one of {', '.join(RANGES)}")
    elif raw["last"] and "since" not in given:
        now = service_of(request).clock.now()
        given["since"] = datetime.fromtimestamp(now - RANGES[raw["last"]], tz=UTC).isoformat()
    return raw, given, errors


def _query(given: dict[str, str], errors: list[str], **paging: int | None) -> DecisionQuery | None:
    try:
        query = DecisionQuery(**given, **paging)
    except ValidationError as exc:
        errors += form_errors(exc, LABELS)
        return None
    return None if errors else query


@router.get("/decisions")
async def inbox(request: Request, session: SessionDep,
                before: Annotated[int | None, Query(ge=1)] = None,
                limit: Annotated[int, Query(ge=1, le=500)] = 50) -> Response:
    """The denials inbox: ``GET /v1/decisions``'s filters as a form (outcome defaults to deny)."""
    raw, given, errors = _filters(request)
    page = None
    query = _query(given, errors, before=before, limit=limit)
    if query is not None:
        try:
            page = await service_of(request).search(query)
        except GatewayError as exc:
            return await unavailable(request, session, exc)
    keep: dict[str, str | int] = {k: v for k, v in raw.items() if v}
    if limit != 50:
        keep["limit"] = limit
    older = f"/ui/decisions?{urlencode({**keep, 'before': page.next_before})}" if page and page.next_before else None
    newest = f"/ui/decisions?{urlencode(keep)}" if before else None
    export = f"/ui/decisions.ndjson?{urlencode({k: v for k, v in raw.items() if v})}"
    registry = request.app.state.runtime.decider.intents
    return await render(
        request, "inbox.html", session, status_code=422 if errors else 200, title="Decisions", filters=raw,
        outcomes=OUTCOMES, page=page, errors=errors, older=older, newest=newest, export=export,
        reason_codes=[c.value for c in ReasonCode], intents=registry.names() if registry else [],
        kinds=KINDS, ranges=list(RANGES),
    )


@router.get("/decisions.ndjson")
async def export(request: Request, session: SessionDep) -> Response:
    """Every decision the inbox's filters match (not just one page), newest first, one whole
    audit record (``DecisionPublic``, as ``GET /v1/audit/export`` writes it) per line."""
    raw, given, errors = _filters(request)
    query = _query(given, errors)
    if query is None:
        return await render(request, "error.html", session, status_code=422, title="Export refused",
                            message="; ".join(errors))
    service = service_of(request)
    log.info("ui export by %s: %s", session.reviewer.id, given)
    batches = service.matching(query)
    try:
        first = await anext(batches, [])  # a store failure here is still a page, not a cut stream
    except GatewayError as exc:
        return await unavailable(request, session, exc)

    async def lines() -> AsyncIterator[bytes]:
        yield "".join(d.model_dump_json() + "\n" for d in first).encode()
        try:
            async for batch in batches:
                yield "".join(d.model_dump_json() + "\n" for d in batch).encode()
        except GatewayError as exc:  # headers are gone: end the stream short, say why in the log
            log.error("ui export failed: %s", exc.message)
            raise

    stamp = datetime.fromtimestamp(service.clock.now(), tz=UTC).strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(lines(), media_type="application/x-ndjson", headers={
        "Content-Disposition": f'attachment; filename="intentgate-decisions-{stamp}.ndjson"',
        "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"})


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
