"""Durable state: tasks, the hash-chained decision log, tokens, approvals."""

from .db import Database
from .records import ApprovalRecord, ChainReport, DecisionRecord, Outcome, TokenRecord
from .store import ApprovalConflict, CommitResult, Store, TaskAdvance

__all__ = [
    "ApprovalConflict",
    "ApprovalRecord",
    "ChainReport",
    "CommitResult",
    "Database",
    "DecisionRecord",
    "Outcome",
    "Store",
    "TaskAdvance",
    "TokenRecord",
]
