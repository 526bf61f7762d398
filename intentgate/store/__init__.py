"""Durable state: tasks, the decision log (a Merkle tree under signed checkpoints), tokens, approvals."""

from .db import Database
from .grants import GrantConflict, GrantStore
from .ledger import LogReport
from .records import ApprovalRecord, DecisionRecord, GrantRecord, Outcome, TokenRecord
from .store import ApprovalConflict, CommitResult, GrantUse, KeptValues, Store, StoreEvents, TaskAdvance

__all__ = [
    "ApprovalConflict",
    "ApprovalRecord",
    "CommitResult",
    "Database",
    "DecisionRecord",
    "GrantConflict",
    "GrantRecord",
    "GrantStore",
    "GrantUse",
    "KeptValues",
    "LogReport",
    "Outcome",
    "Store",
    "StoreEvents",
    "TaskAdvance",
    "TokenRecord",
]
