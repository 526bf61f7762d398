"""Durable state: tasks, the hash-chained decision log, tokens, approvals."""

from .db import Database
from .records import ApprovalRecord, ChainReport, DecisionRecord, Outcome, TokenRecord
from .store import CommitResult, Store, TaskAdvance

__all__ = [
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
