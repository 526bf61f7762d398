"""SQLModel tables: tasks, decisions (append-only, sealed into a Merkle tree), tokens, approvals.

Times are epoch seconds (float): exact round trip in SQLite REAL and PostgreSQL double
precision, cheap range queries, and a record's hash covers exactly what is stored.
JSON columns use the plain ``JSON`` type (text kept verbatim on PostgreSQL too).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, Text
from sqlmodel import Field, SQLModel

__all__ = [
    "ApprovalRow",
    "AuditLeafRow",
    "CheckpointRow",
    "BudgetUsageRow",
    "GrantRow",
    "ChainHeadRow",
    "DecisionRow",
    "OutcomeRow",
    "RollupNameRow",
    "RollupRow",
    "RollupStateRow",
    "TaskGrantRow",
    "TaskResultRow",
    "TaskRow",
    "TaskStepRow",
    "TokenRow",
    "metadata",
]

metadata = SQLModel.metadata


class TaskRow(SQLModel, table=True):
    __tablename__ = "tasks"
    # an agent's open tasks of one intent, counted from the index alone when a task begins
    __table_args__ = (Index("ix_tasks_agent_intent_open", "agent", "intent", "status", "expires_at"),)

    id: str = Field(primary_key=True, max_length=64)
    intent: str = Field(max_length=64, index=True)
    intent_version: str = Field(max_length=64)
    agent: str = Field(max_length=512, index=True)
    params: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    reason: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(max_length=16, index=True)
    created_at: float
    expires_at: float = Field(index=True)
    ended_at: float | None = None
    state: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False),
                                  description="workflow.TaskState: what the decision path reads and writes")
    version: int = 0
    issuer: str | None = Field(default=None, max_length=512, description="who began it; null: the agent itself")


class TaskStepRow(SQLModel, table=True):
    """One step a task took (its ``n``-th, 1-based).  Appended with the decision that allowed
    it, never updated; read by reviewers and replay, not by the decision path."""

    __tablename__ = "task_steps"

    task_id: str = Field(primary_key=True, max_length=64)
    n: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    step: str = Field(max_length=64)
    tool: str = Field(max_length=256)
    decision: str = Field(max_length=16)
    decision_id: str = Field(max_length=40)
    at: float
    arguments: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))


class DecisionRow(SQLModel, table=True):
    """One verdict.  Never updated or deleted; ``hash`` chains it to the previous row."""

    __tablename__ = "decisions"
    # Every index costs a page write per decision on the hot path: keep the ones the
    # reviewer's queries (outcome or agent, newest first) and task pages need.
    __table_args__ = (
        Index("ix_decisions_outcome_seq", "outcome", "seq"),
        Index("ix_decisions_agent_seq", "agent", "seq"),
    )

    seq: int = Field(primary_key=True)
    id: str = Field(max_length=40, unique=True)
    at: float
    kind: str = Field(max_length=16)  # tools/call | task/begin | task/end | resources/read ...
    agent: str = Field(max_length=512)
    intent: str | None = Field(default=None, max_length=64)
    intent_version: str | None = Field(default=None, max_length=64)
    task_id: str | None = Field(default=None, max_length=64, index=True)
    step: str | None = Field(default=None, max_length=64)
    upstream: str | None = Field(default=None, max_length=64)
    tool: str | None = Field(default=None, max_length=256)
    arguments_sha256: str | None = Field(default=None, max_length=64)
    arguments: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    outcome: str = Field(max_length=16)
    reasons: list[str] = Field(sa_column=Column(JSON, nullable=False))
    policy_input: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    policy_result: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    policy_revision: str | None = Field(default=None, max_length=64)
    intents_revision: str | None = Field(default=None, max_length=64)
    token_jti: str | None = Field(default=None, max_length=64)
    token_expires_at: float | None = None
    masked: list[str] = Field(sa_column=Column(JSON, nullable=False))
    timings_us: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    prev_hash: str = Field(max_length=64, description="v1 rows: the previous row's hash; v2: empty")
    hash: str = Field(max_length=64, description="v2: the row's Merkle leaf hash; v1: its chain hash")
    hash_v: int = Field(default=2, sa_column_kwargs={"server_default": "1"},
                        description="version of the record encoding the hash covers (records.entry_hash)")


class RollupRow(SQLModel, table=True):
    """How many decisions of one outcome fell in one time bucket (``width`` seconds from
    ``start``, UTC), in all (``dim`` = ``outcome``, ``name_id`` 0) or with one agent, tool,
    intent or reason (denied, held and would-deny decisions only).  Added to by
    ``rollup.fold``, never by the decision path."""

    __tablename__ = "decision_rollup"
    __table_args__ = {"sqlite_with_rowid": False}  # rows kept in key order: a range of buckets is one read

    width: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})  # rollup.WIDTHS
    dim: str = Field(primary_key=True, max_length=8)  # outcome | agent | tool | intent | reason
    start: int = Field(primary_key=True, sa_type=BigInteger, sa_column_kwargs={"autoincrement": False})
    outcome: str = Field(primary_key=True, max_length=16)
    name_id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False},
                         description="decision_rollup_names.id; 0 for dim outcome")
    n: int = Field(sa_type=BigInteger)


class RollupNameRow(SQLModel, table=True):
    """The names ``decision_rollup`` counts, each once (a reason may be long; null is a name too)."""

    __tablename__ = "decision_rollup_names"

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=32, unique=True, description="rollup.name_key(name)")
    name: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class RollupStateRow(SQLModel, table=True):
    """The one row saying which decisions ``decision_rollup`` (and the text index) hold."""

    __tablename__ = "decision_rollup_state"

    id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    seq: int = Field(description="every decision up to this seq is folded in, but those in holes")
    holes: list[Any] = Field(sa_column=Column(JSON, nullable=False),
                             description="[first, last, seen_at]: seqs missing when folded (PostgreSQL: may commit late)")
    text_index: bool = Field(description="the text index exists (SQLite FTS5, PostgreSQL pg_trgm)")


class AuditLeafRow(SQLModel, table=True):
    """One decision sealed into the Merkle tree: leaf ``idx`` (0-based, contiguous) is decision
    ``seq``.  Appended by the sealer only, in the order it sealed them."""

    __tablename__ = "audit_leaves"

    idx: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    seq: int = Field(unique=True)
    hash: str = Field(max_length=64, description="the leaf hash (hex)")


class CheckpointRow(SQLModel, table=True):
    """A signed tree head over the first ``size`` leaves (see ``intentgate.checkpoints``)."""

    __tablename__ = "audit_checkpoints"

    size: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    root: str = Field(max_length=64)
    at: float
    max_seq: int = Field(description="the highest decision seq sealed so far")
    key_id: str = Field(max_length=64)
    note: str = Field(sa_column=Column(Text, nullable=False))
    frontier: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))


class ChainHeadRow(SQLModel, table=True):
    """The single row holding the newest ``seq`` and ``hash`` (serialises decision writes)."""

    __tablename__ = "chain_head"

    id: int = Field(primary_key=True)
    seq: int
    hash: str = Field(max_length=64)


class OutcomeRow(SQLModel, table=True):
    """What happened after an allow: forwarded result or error, appended once per decision."""

    __tablename__ = "call_outcomes"

    decision_id: str = Field(primary_key=True, max_length=40)
    at: float
    status: str = Field(max_length=16)  # ok | tool_error | upstream_error | timeout | result_too_large | ask_refused | cancelled
    latency_ms: float
    detail: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class TokenRow(SQLModel, table=True):
    __tablename__ = "tokens"

    jti: str = Field(primary_key=True, max_length=64)
    decision_id: str = Field(max_length=40)
    task_id: str = Field(max_length=64, index=True)
    agent: str = Field(max_length=512)
    audience: str = Field(max_length=64)
    tool: str = Field(max_length=256)
    arguments_sha256: str = Field(max_length=64)
    issued_at: float
    expires_at: float
    status: str = Field(max_length=16)  # issued | consumed | revoked
    consumed_at: float | None = None
    revoked_at: float | None = None


class ApprovalRow(SQLModel, table=True):
    __tablename__ = "approvals"

    id: str = Field(primary_key=True, max_length=40)
    decision_id: str = Field(max_length=40, index=True)
    agent: str = Field(max_length=512)
    task_id: str = Field(max_length=64, index=True)
    step: str = Field(max_length=64)
    tool: str = Field(max_length=256)
    arguments_sha256: str = Field(max_length=64)
    policy_revision: str = Field(max_length=64)
    reasons: list[str] = Field(sa_column=Column(JSON, nullable=False))
    created_at: float
    expires_at: float
    status: str = Field(max_length=16, index=True)  # pending | approved | rejected | used
    decided_by: str | None = Field(default=None, max_length=512)
    decided_at: float | None = None
    note: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    used_by_decision: str | None = Field(default=None, max_length=40)


class GrantRow(SQLModel, table=True):
    """A break-glass exception: one agent, one tool or one intent, until ``expires_at``."""

    __tablename__ = "grants"

    id: str = Field(primary_key=True, max_length=40)
    agent: str = Field(max_length=512, index=True)
    tool: str | None = Field(default=None, max_length=256)
    intent: str | None = Field(default=None, max_length=64)
    reason: str = Field(sa_column=Column(Text, nullable=False))
    created_by: str = Field(max_length=512)
    created_at: float
    expires_at: float
    revoked_at: float | None = None
    revoked_by: str | None = Field(default=None, max_length=512)
    uses: int = 0
    last_used_decision: str | None = Field(default=None, max_length=40)
    signed_off_by: str | None = Field(default=None, max_length=512)
    signed_off_at: float | None = Field(default=None, index=True)
    sign_off_note: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    overrides_approval: bool = Field(default=False, description="also lets through steps with approval: required")


class TaskGrantRow(SQLModel, table=True):
    """A task grant that began a task: its ``jti`` can never begin another."""

    __tablename__ = "task_grants"

    jti: str = Field(primary_key=True, max_length=64)
    issuer: str = Field(max_length=512)
    agent: str = Field(max_length=512)
    task_id: str = Field(max_length=64)
    used_at: float
    expires_at: float = Field(index=True)


class BudgetUsageRow(SQLModel, table=True):
    """What allowed calls spent of one budget (and scope) in one slice of its window.

    A window is kept as 60 slices (``bucket_seconds`` = window / 60), so reading what a budget
    has used is a sum over at most 61 rows, whatever the number of calls.
    """

    __tablename__ = "budget_usage"

    budget: str = Field(primary_key=True, max_length=64)
    scope: str = Field(primary_key=True, max_length=1024, description="canonical JSON of the budget's per values")
    bucket_start: float = Field(primary_key=True, description="epoch seconds the slice begins")
    amount: float
    calls: int


class TaskResultRow(SQLModel, table=True):
    """Values one allowed call's result held at one path a later binding reads (never the
    whole result): kept with the decision that produced them."""

    __tablename__ = "task_results"
    __table_args__ = (Index("ix_task_results_task", "task_id", "at"),)

    decision_id: str = Field(primary_key=True, max_length=40)
    path: str = Field(primary_key=True, max_length=512)
    task_id: str = Field(max_length=64)
    step: str = Field(max_length=64)
    at: float
    found: list[Any] = Field(sa_column=Column(JSON, nullable=False), description="the values, in the order found")
    dropped: bool = Field(default=False, description="some values were not kept (too many, too large)")
