"""Who is using the UI: the reviewer cookie, and the CSRF token every form carries.

The login form takes a reviewer token (``intentgate admin-token``, or an OIDC reviewer token)
and checks it with the API's :class:`~intentgate.review.ReviewerAuth`; the token itself becomes an
``HttpOnly``, ``SameSite=Strict`` cookie (``Secure`` over https) scoped to ``/ui``, and is
verified again on every request, so an expired or revoked credential ends the session.

Every state-changing form is a POST carrying a CSRF token in a hidden field.  The token is an
HMAC of the session's reviewer token (the secret no other site can read), so it is per session,
needs no server-side state and is the same on every gateway replica; it reveals nothing about
the reviewer token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import quote

import jwt
from fastapi import Depends, HTTPException, Request
from fastapi.responses import RedirectResponse

from ..review import Reviewer, ReviewerDenied, ReviewService

__all__ = [
    "COOKIE",
    "Session",
    "SessionDep",
    "csrf_ok",
    "login_redirect",
    "safe_next",
    "sign_in",
    "sign_out",
    "verify",
]

log = logging.getLogger("intentgate.ui")

COOKIE = "intentgate_reviewer"
COOKIE_PATH = "/ui"
_CSRF_LABEL = b"intentgate-ui-csrf/v1"


@dataclass(frozen=True)
class Session:
    """A verified reviewer and the CSRF token of this session."""

    reviewer: Reviewer
    csrf: str


def csrf_for(token: str) -> str:
    return hmac.new(token.encode(), _CSRF_LABEL, hashlib.sha256).hexdigest()


def csrf_ok(session: Session, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(session.csrf.encode(), str(sent).encode())


def verify(service: ReviewService, token: str | None) -> Reviewer:
    """The reviewer behind ``token``, or :class:`ReviewerDenied` (401 / 403), as for the REST API."""
    if service.auth is None:
        raise ReviewerDenied("reviewer access is not configured", status=401)
    return service.auth.authenticate(token)


def safe_next(target: str | None) -> str:
    """A redirect target inside the UI (never another site): otherwise the inbox."""
    if target and target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui/decisions"


def login_redirect(request: Request) -> str:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return f"/ui/login?next={quote(here, safe='')}" if request.method == "GET" else "/ui/login"


def current_session(request: Request) -> Session:
    """The reviewer of this request, or a redirect (303) to the login page."""
    token = request.cookies.get(COOKIE)
    try:
        reviewer = verify(request.app.state.review, token)
    except ReviewerDenied as exc:
        if token:
            log.info("ui session refused (%d): %s", exc.status, exc.message)
        raise HTTPException(status_code=303, headers={"Location": login_redirect(request)}) from None
    return Session(reviewer=reviewer, csrf=csrf_for(token or ""))


SessionDep = Annotated[Session, Depends(current_session)]


def sign_in(request: Request, token: str, target: str) -> RedirectResponse:
    """Set the session cookie (the token is already verified) and go to ``target``."""
    response = RedirectResponse(safe_next(target), status_code=303)
    max_age = None
    exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    if isinstance(exp, int | float):
        max_age = max(0, int(exp - request.app.state.review.clock.now()))
    response.set_cookie(
        COOKIE, token, max_age=max_age, path=COOKIE_PATH, httponly=True, samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


def sign_out(request: Request) -> RedirectResponse:
    response = RedirectResponse("/ui/login?signed_out=1", status_code=303)
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")
    return response
