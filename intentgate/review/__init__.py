"""The reviewer surface: reviewer credentials, decision search and detail, audit export."""

from .auth import ADMIN_AUDIENCE, ADMIN_ISSUER, ADMIN_TYP, AdminTokenIssuer, Reviewer, ReviewerAuth, ReviewerDenied
from .models import (
    DecisionDetail,
    DecisionPage,
    DecisionPublic,
    DecisionQuery,
    DecisionSummary,
    GraphStep,
    IntentGraph,
    intent_graph,
)
from .service import ReviewService

__all__ = [
    "ADMIN_AUDIENCE",
    "ADMIN_ISSUER",
    "ADMIN_TYP",
    "AdminTokenIssuer",
    "DecisionDetail",
    "DecisionPage",
    "DecisionPublic",
    "DecisionQuery",
    "DecisionSummary",
    "GraphStep",
    "IntentGraph",
    "ReviewService",
    "Reviewer",
    "ReviewerAuth",
    "ReviewerDenied",
    "intent_graph",
]
