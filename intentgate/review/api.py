"""The reviewer REST API under ``/v1``: decisions, the overview, the audit export, approvals,
break-glass grants and what-if replay.

Every route needs a reviewer credential (:func:`require_reviewer`): no or an invalid token
is a 401 with ``WWW-Authenticate: Bearer``; an agent's workload token, or a reviewer token
without the role, is a 403.  The app sets ``app.state.review`` (a :class:`ReviewService`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..errors import ConfigError, GatewayError
from ..replay import ReplayReport
from ..store import ApprovalConflict, GrantConflict
from .auth import Reviewer, ReviewerDenied
from .models import (
    MAX_SEQ,
    ApprovalList,
    ApprovalPublic,
    DecisionDetail,
    DecisionPage,
    DecisionQuery,
    GrantCreate,
    GrantList,
    GrantPublic,
    Overview,
    ReplayRequest,
    ReviewNote,
)
from .overview import OverviewQuery
from .service import ReviewService

__all__ = ["require_reviewer", "router"]

log = logging.getLogger("intentgate.review")

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="reviewer",
    description="a reviewer token: `intentgate admin-token`, or an OIDC token from `review.issuers` with the role",
)
_DENIED = {
    401: ("unauthenticated", "a valid reviewer token is required"),
    403: ("forbidden", "this credential does not grant reviewer access"),
}


def _refusal(status: int) -> HTTPException:
    """The one answer for each refusal: the reason stays in the log."""
    error, message = _DENIED[status]
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return HTTPException(status_code=status, detail={"error": error, "message": message}, headers=headers)


def review_service(request: Request) -> ReviewService:
    return request.app.state.review


async def require_reviewer(
    service: Annotated[ReviewService, Depends(review_service)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Reviewer:
    """The reviewer making the request, or a 401/403."""
    if service.auth is None:
        raise _refusal(401)
    try:
        return service.auth.authenticate(credentials.credentials if credentials else None)
    except ReviewerDenied as exc:
        raise _refusal(exc.status) from None


def _unavailable(exc: GatewayError) -> HTTPException:
    log.error("reviewer query failed: %s", exc.message)
    return HTTPException(status_code=503, detail={"error": exc.code.value, "message": "the decision store is unavailable"})


ReviewerDep = Annotated[Reviewer, Depends(require_reviewer)]
ServiceDep = Annotated[ReviewService, Depends(review_service)]

router = APIRouter(
    prefix="/v1",
    tags=["review"],
    responses={
        400: {"description": "the request body is not JSON"},
        401: {"description": "no valid reviewer token"},
        403: {"description": "not a reviewer"},
        503: {"description": "the decision store failed or timed out"},
    },
)


@router.get("/decisions", response_model=DecisionPage, summary="Search decisions, newest first")
async def list_decisions(
    query: Annotated[DecisionQuery, Query()], reviewer: ReviewerDep, service: ServiceDep
) -> DecisionPage:
    """Decisions matching every given filter, newest first, `limit` per page.

    Paging is by key: pass the page's `next_before` as `before` for the next (older) page.
    """
    try:
        return await service.search(query)
    except GatewayError as exc:
        raise _unavailable(exc) from None


@router.get(
    "/decisions/{decision_id}",
    response_model=DecisionDetail,
    summary="One decision in full",
    responses={404: {"description": "no such decision"}},
)
async def get_decision(
    decision_id: Annotated[str, Path(max_length=40)], reviewer: ReviewerDep, service: ServiceDep
) -> DecisionDetail:
    """The decision's audit record with its call outcome, token status, task, approvals and
    the intent's graph with the task's path marked."""
    try:
        detail = await service.detail(decision_id)
    except GatewayError as exc:
        raise _unavailable(exc) from None
    if detail is None:
        raise HTTPException(status_code=404, detail={"error": "not_found", "message": "no such decision"})
    return detail


@router.get("/overview", response_model=Overview, responses={422: {"description": "an invalid time range"}},
            summary="Outcomes over a time range, what was denied or held most, and what waits")
async def overview(query: Annotated[OverviewQuery, Query()], reviewer: ReviewerDep, service: ServiceDep) -> Overview:
    """The overview page's data: decisions by outcome in the range and per bucket (at most 48,
    edges on whole minutes, hours or days), the top 10 reasons, agents, tools and intents of the
    denied, held and would-deny decisions, and the pending approvals and active and unsigned
    grants now.  The range is `range` (the last 1h, 6h, 24h (default), 7d or 30d) or `since`
    (and `until`, default now)."""
    try:
        return await service.overview(query)
    except (ValueError, OverflowError) as exc:  # a since later than now, a time beyond what a date holds
        raise HTTPException(status_code=422, detail={"error": "invalid", "message": str(exc)}) from None
    except GatewayError as exc:
        raise _unavailable(exc) from None


@router.get(
    "/audit/export",
    response_class=StreamingResponse,
    summary="Export the audit log as JSON lines",
    responses={
        200: {
            "description": "one DecisionPublic object per line, in seq order",
            "content": {"application/x-ndjson": {"schema": {"$ref": "#/components/schemas/DecisionPublic"}}},
        }
    },
)
async def export(
    reviewer: ReviewerDep,
    service: ServiceDep,
    since: Annotated[datetime | None, Query(description="decisions at or after this time (RFC 3339)")] = None,
    after_seq: Annotated[int, Query(ge=0, le=MAX_SEQ, description="decisions with a larger seq")] = 0,
) -> StreamingResponse:
    """Every decision from a time or a seq onwards, one JSON object per line (stable field
    names), up to the newest decision when the export started; continue with `after_seq`."""
    try:
        upto = await service.store.last_seq()
    except GatewayError as exc:
        raise _unavailable(exc) from None
    log.info("audit export by %s from seq %d / %s up to seq %d", reviewer.id, after_seq, since, upto)

    async def lines() -> AsyncIterator[bytes]:
        try:
            async for batch in service.export(since=since, after_seq=after_seq, upto_seq=upto):
                yield "".join(d.model_dump_json() + "\n" for d in batch).encode()
        except GatewayError as exc:  # headers are gone: end the stream short, say why in the log
            log.error("audit export failed: %s", exc.message)
            raise

    return StreamingResponse(lines(), media_type="application/x-ndjson")


def _conflict(why: str) -> HTTPException:
    if why == "unknown":
        return HTTPException(status_code=404, detail={"error": "not_found", "message": "no such item"})
    return HTTPException(status_code=409, detail={"error": "conflict", "message": why})


# ----- approvals ---------------------------------------------------------------------
@router.get("/approvals", response_model=ApprovalList, summary="Approvals (the queue: pending, oldest first)")
async def list_approvals(
    reviewer: ReviewerDep,
    service: ServiceDep,
    status: Annotated[Literal["pending", "approved", "rejected", "used", "any"], Query()] = "pending",
) -> ApprovalList:
    try:
        return ApprovalList(approvals=await service.approvals(status=None if status == "any" else status))
    except GatewayError as exc:
        raise _unavailable(exc) from None


async def _decide(service: ReviewService, approval_id: str, approve: bool, reviewer: Reviewer,
                  body: ReviewNote | None) -> ApprovalPublic:
    try:
        decided = await service.decide_approval(approval_id, approve=approve, reviewer=reviewer,
                                                note=body.note if body else None)
    except ApprovalConflict as exc:
        raise _conflict(exc.why) from None
    except GatewayError as exc:
        raise _unavailable(exc) from None
    log.info("approval %s %s by %s", approval_id, "approved" if approve else "rejected", reviewer.id)
    return decided


_DECIDED = {404: {"description": "no such approval"}, 409: {"description": "already decided, or expired"}}


@router.post("/approvals/{approval_id}/approve", response_model=ApprovalPublic, responses=_DECIDED,
             summary="Approve a held call (once): the agent's identical retry is then allowed, once")
async def approve(approval_id: Annotated[str, Path(max_length=40)], reviewer: ReviewerDep, service: ServiceDep,
                  body: ReviewNote | None = None) -> ApprovalPublic:
    return await _decide(service, approval_id, True, reviewer, body)


@router.post("/approvals/{approval_id}/reject", response_model=ApprovalPublic, responses=_DECIDED,
             summary="Reject a held call (once)")
async def reject(approval_id: Annotated[str, Path(max_length=40)], reviewer: ReviewerDep, service: ServiceDep,
                 body: ReviewNote | None = None) -> ApprovalPublic:
    return await _decide(service, approval_id, False, reviewer, body)


# ----- break-glass grants ------------------------------------------------------------
@router.post("/grants", response_model=GrantPublic, status_code=201, responses={422: {"description": "invalid"}},
             summary="Grant a time-boxed break-glass exception to one agent for one tool or intent")
async def create_grant(body: GrantCreate, reviewer: ReviewerDep, service: ServiceDep) -> GrantPublic:
    try:
        grant = await service.create_grant(body, reviewer=reviewer)
    except ValueError as exc:
        raise HTTPException(status_code=422, detail={"error": "invalid", "message": str(exc)}) from None
    except GatewayError as exc:
        raise _unavailable(exc) from None
    log.warning("break-glass grant %s for %s on %s by %s: %s", grant.id, grant.agent, grant.tool or grant.intent,
                reviewer.id, grant.reason)
    return grant


@router.get("/grants", response_model=GrantList, summary="Break-glass grants, newest first")
async def list_grants(
    reviewer: ReviewerDep,
    service: ServiceDep,
    needs_review: Annotated[bool, Query(description="only grants not signed off yet")] = False,
    active: Annotated[bool, Query(description="only grants usable now")] = False,
) -> GrantList:
    try:
        return GrantList(grants=await service.grants(needs_review=needs_review, active=active))
    except GatewayError as exc:
        raise _unavailable(exc) from None


@router.post("/grants/{grant_id}/sign-off", response_model=GrantPublic,
             responses={404: {"description": "no such grant"}, 409: {"description": "already signed off"}},
             summary="Sign a grant off after post-hoc review (once)")
async def sign_off(grant_id: Annotated[str, Path(max_length=40)], reviewer: ReviewerDep, service: ServiceDep,
                   body: ReviewNote | None = None) -> GrantPublic:
    try:
        return await service.sign_off_grant(grant_id, reviewer=reviewer, note=body.note if body else None)
    except GrantConflict as exc:
        raise _conflict(exc.why) from None
    except GatewayError as exc:
        raise _unavailable(exc) from None


@router.post("/grants/{grant_id}/revoke", response_model=GrantPublic,
             responses={404: {"description": "no such grant"}, 409: {"description": "already revoked"}},
             summary="End a grant now")
async def revoke(grant_id: Annotated[str, Path(max_length=40)], reviewer: ReviewerDep,
                 service: ServiceDep) -> GrantPublic:
    try:
        return await service.revoke_grant(grant_id, reviewer=reviewer)
    except GrantConflict as exc:
        raise _conflict(exc.why) from None
    except GatewayError as exc:
        raise _unavailable(exc) from None


# ----- replay ------------------------------------------------------------------------
@router.post("/replay", response_model=ReplayReport,
             responses={404: {"description": "no such decision"}, 422: {"description": "bad candidate"}},
             summary="What-if: re-decide recorded decisions against a candidate policy and intents")
async def replay(body: ReplayRequest, reviewer: ReviewerDep, service: ServiceDep) -> ReplayReport:
    """Nothing is written.  Without candidate directories the gateway's own are read anew."""
    try:
        return await service.replay(body)
    except LookupError:
        raise HTTPException(status_code=404, detail={"error": "not_found", "message": "no such decision"}) from None
    except ConfigError as exc:
        raise HTTPException(status_code=422, detail={"error": "invalid", "message": exc.message}) from None
    except GatewayError as exc:
        raise _unavailable(exc) from None
