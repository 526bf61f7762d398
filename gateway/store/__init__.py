"""Durable state: tasks, the hash-chained decision log, tokens, approvals."""

from .db import Database
from .grants import GrantConflict, GrantStore
from .records import ApprovalRecord, ChainReport, DecisionRecord, GrantRecord, Outcome, TokenRecord
from .store import ApprovalConflict, CommitResult, GrantUse, KeptValues, Store, StoreEvents, TaskAdvance

__all__ = [
    "ApprovalConflict",
    "ApprovalRecord",
    "ChainReport",
    "CommitResult",
    "Database",
    "DecisionRecord",
    "GrantConflict",
    "GrantRecord",
    "GrantStore",
    "GrantUse",
    "KeptValues",
    "Outcome",
    "Store",
    "StoreEvents",
    "TaskAdvance",
    "TokenRecord",
]
