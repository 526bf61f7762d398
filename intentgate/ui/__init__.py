"""The reviewer web UI under ``/ui``: server-rendered pages (Jinja2, no scripts) over the same
:class:`~intentgate.review.ReviewService` and :class:`~intentgate.review.ReviewerAuth` as the REST API.

- ``pages``: login/logout, the denials inbox (and its NDJSON export), one decision (with its intent
  graph as SVG);
- ``overview``: outcomes over time, top reasons / agents / tools / intents, what waits for a reviewer;
- ``actions``: the approvals queue, break-glass grants, what-if replay;
- ``session``: the reviewer cookie and the CSRF token every form carries;
- ``graph``: the server-side SVG layout of an intent's graph.
"""

from fastapi import APIRouter

from .actions import router as _actions
from .overview import router as _overview
from .pages import router as _pages

__all__ = ["router"]

router = APIRouter()
router.include_router(_pages)
router.include_router(_overview)
router.include_router(_actions)
