"""The reviewer REST API under ``/v1``: decisions and the audit export.

Every route needs a reviewer credential (:func:`require_reviewer`): no or an invalid token
is a 401 with ``WWW-Authenticate: Bearer``; an agent's workload token, or a reviewer token
without the role, is a 403.  The app sets ``app.state.review`` (a :class:`ReviewService`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..errors import GatewayError
from .auth import Reviewer, ReviewerDenied
from .models import DecisionDetail, DecisionPage, DecisionQuery
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
    after_seq: Annotated[int, Query(ge=0, description="decisions with a larger seq")] = 0,
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
