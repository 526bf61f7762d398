"""The reviewer surface's public models: one family for REST, CLI and audit export.

``DecisionSummary`` (a list row) ⊂ ``DecisionPublic`` (the whole audit record: an export line,
the core of a decision page).  ``DecisionDetail`` puts a ``DecisionPublic`` next to what it
refers to: the call's outcome, the token, the task, approvals and the intent's graph with the
task's path marked.  Table rows never reach the wire: everything goes through these models.
Field names are stable (SIEMs parse the export); times are RFC 3339 UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..decide import explain
from ..errors import reason_code_of
from ..intents import Intent
from ..store import ApprovalRecord, DecisionRecord, GrantRecord, Outcome
from ..store.queries import DecisionDetailRows, DecisionFilter
from ..workflow import Task, allowed_next

__all__ = [
    "MAX_SEQ",
    "Backlog",
    "Overview",
    "OverviewBucket",
    "TopEntry",
    "ApprovalList",
    "ApprovalPublic",
    "GrantCreate",
    "GrantList",
    "GrantPublic",
    "ReplayRequest",
    "ReviewNote",
    "approval_public",
    "grant_public",
    "CallOutcomePublic",
    "DecisionDetail",
    "DecisionPage",
    "DecisionPublic",
    "DecisionQuery",
    "DecisionSummary",
    "GraphStep",
    "IntentGraph",
    "intent_graph",
    "PathEntry",
    "TaskPublic",
    "TokenPublic",
    "build_detail",
    "epoch",
    "public",
    "summary",
]

MAX_SEQ = 2**63 - 1  # the largest integer SQLite and PostgreSQL store: a seq beyond it is a 422, not a crash


def _dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz=UTC)


def epoch(value: datetime | None) -> float | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


class _Public(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DecisionSummary(_Public):
    """One decision in a list: who, what, verdict and why."""

    seq: int = Field(description="the record's number in the log (the paging key)")
    id: str
    at: datetime
    kind: str = Field(description="tools/call, task/begin, task/end, task/expire, resources/read, prompts/get, "
                      "token/redeem, or a reviewer action: review/approve, review/reject, grant/create, "
                      "grant/revoke, grant/signoff, admin/token, keys/rotate")
    outcome: Outcome
    reasons: list[str] = Field(description="reason codes, `code` or `code:detail`")
    agent: str
    intent: str | None
    intent_version: str | None
    task_id: str | None
    step: str | None
    upstream: str | None
    tool: str | None = Field(description="`upstream.tool`")
    arguments_sha256: str | None
    token_jti: str | None
    policy_revision: str | None
    intents_revision: str | None


class DecisionPublic(DecisionSummary):
    """The whole audit record of one decision (one line of the audit export)."""

    arguments: dict[str, Any] | None = Field(description="null when audit.arguments is false")
    policy_input: dict[str, Any] | None
    policy_result: dict[str, Any] | None
    masked: list[str] = Field(description="JSON pointers of values kept out of the record")
    timings_us: dict[str, Any] = Field(description="per-stage timings in microseconds")
    token_expires_at: datetime | None
    prev_hash: str = Field(description="rows of record encoding v1 only: the previous row's hash (the old chain)")
    hash: str = Field(description="v2: the record's Merkle leaf hash (what `audit prove` proves); v1: its chain hash")
    hash_v: int = Field(description="version of the record encoding the hash covers")


def summary(record: DecisionRecord) -> DecisionSummary:
    return DecisionSummary.model_validate(_fields(record, DecisionSummary))


def public(record: DecisionRecord) -> DecisionPublic:
    return DecisionPublic.model_validate(_fields(record, DecisionPublic))


def _fields(record: DecisionRecord, model: type[BaseModel]) -> dict[str, Any]:
    data = {name: getattr(record, name) for name in model.model_fields}
    data["at"] = _dt(record.at)
    if "token_expires_at" in data:
        data["token_expires_at"] = _dt(record.token_expires_at)
    return data


class DecisionQuery(_Public):
    """Filters for the decision list; every given one narrows the result."""

    outcome: Outcome | None = None
    agent: str | None = Field(default=None, max_length=512)
    intent: str | None = Field(default=None, max_length=64)
    tool: str | None = Field(default=None, max_length=256, description="`upstream.tool`")
    kind: str | None = Field(default=None, max_length=16, description="e.g. tools/call")
    reason: str | None = Field(
        default=None, max_length=300, description="a reason code (also matches `code:detail`) or one full reason"
    )
    q: str | None = Field(
        default=None, min_length=1, max_length=200,
        description="text search in id, agent, tool, intent, task id, reasons and call arguments "
                    "(case-insensitive)",
    )
    since: datetime | None = Field(default=None, description="decided at or after (RFC 3339; UTC if no offset)")
    until: datetime | None = Field(default=None, description="decided before")
    before: int | None = Field(default=None, ge=1, le=MAX_SEQ, description="page key: only decisions with a smaller seq")
    limit: int = Field(default=50, ge=1, le=500)

    @field_validator("reason")
    @classmethod
    def _known_code(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                reason_code_of(v)
            except ValueError:
                raise ValueError(f"unknown reason code {v.split(':', 1)[0]!r}") from None
        return v

    def to_filter(self) -> DecisionFilter:
        return DecisionFilter(
            outcome=self.outcome, agent=self.agent, intent=self.intent, tool=self.tool, kind=self.kind,
            reason=self.reason, q=self.q, since=epoch(self.since), until=epoch(self.until), before_seq=self.before,
            limit=self.limit,
        )


class DecisionPage(_Public):
    items: list[DecisionSummary]
    next_before: int | None = Field(description="pass as `before` for the next (older) page; null: no more")


class CallOutcomePublic(_Public):
    at: datetime
    status: str = Field(description="ok, tool_error, upstream_error or timeout")
    latency_ms: float
    detail: str | None
    kept: dict[str, list[Any]] = Field(
        default_factory=dict, description="what the result held at the paths later bindings read (path -> values)")


class TokenPublic(_Public):
    jti: str
    status: Literal["issued", "consumed", "revoked"]
    audience: str
    tool: str
    issued_at: datetime
    expires_at: datetime
    consumed_at: datetime | None
    revoked_at: datetime | None


class HistoryPublic(_Public):
    step: str
    tool: str
    decision: str
    decision_id: str
    at: datetime


class TaskPublic(_Public):
    id: str
    intent: str
    intent_version: str
    agent: str
    issuer: str | None = Field(default=None, description="the task issuer that began it; null: the agent itself")
    params: dict[str, Any]
    reason: str
    status: str
    created_at: datetime
    expires_at: datetime
    ended_at: datetime | None
    history: list[HistoryPublic] = Field(description="steps taken, in order (arguments: see each decision)")


class ApprovalPublic(_Public):
    id: str
    decision_id: str = Field(description="the held decision")
    agent: str
    task_id: str
    status: str
    step: str
    tool: str
    arguments_sha256: str
    policy_revision: str
    reasons: list[str]
    created_at: datetime
    expires_at: datetime
    decided_by: str | None
    decided_at: datetime | None
    note: str | None
    used_by_decision: str | None


class PathEntry(_Public):
    position: int = Field(description="1-based position in the task's path")
    step: str
    tool: str
    decision_id: str
    decision: str
    at: datetime
    relation: Literal["before", "this", "after"] = Field(description="taken before, by, or after this decision")


class GraphStep(_Public):
    name: str
    tool: str
    next: list[str] = Field(description="steps it leads to (for a group's step: the group's next)")
    start: bool
    terminal: bool
    approval: str
    max_calls: int
    free: bool = Field(default=False, description="callable at any point of the task")
    group: str | None = Field(default=None, description="the group of steps it runs in, in any order")
    taken: list[int] = Field(description="positions in the path where the task took this step")
    attempted: bool = Field(description="the step this decision was about")


class IntentGraph(_Public):
    """The intent's workflow graph with the task's path marked."""

    intent: str
    version: str = Field(description="version of the intent loaded now")
    decided_version: str | None = Field(description="version the decision was made under")
    start: list[str]
    steps: list[GraphStep]
    groups: dict[str, list[str]] = Field(default_factory=dict, description="groups: name -> its steps")
    path: list[PathEntry]
    attempted: str | None
    attempted_known: bool = Field(description="the attempted step exists in the intent")
    allowed_next: list[str] = Field(description="steps the graph allowed when the decision was made")


class DecisionDetail(_Public):
    decision: DecisionPublic
    explanation: str
    call_outcome: CallOutcomePublic | None = Field(description="what the forwarded call did (allows)")
    token: TokenPublic | None
    task: TaskPublic | None
    approvals: list[ApprovalPublic]
    graph: IntentGraph | None = Field(description="null when the intent is not loaded")


def approval_public(a: ApprovalRecord) -> ApprovalPublic:
    return ApprovalPublic(
        id=a.id, decision_id=a.decision_id, agent=a.agent, task_id=a.task_id, status=a.status, step=a.step,
        tool=a.tool, arguments_sha256=a.arguments_sha256, policy_revision=a.policy_revision, reasons=a.reasons,
        created_at=_dt(a.created_at), expires_at=_dt(a.expires_at), decided_by=a.decided_by,
        decided_at=_dt(a.decided_at), note=a.note, used_by_decision=a.used_by_decision,
    )


class ApprovalList(_Public):
    approvals: list[ApprovalPublic]


class ReviewNote(_Public):
    """A reviewer's note on approving, rejecting or signing off."""

    note: str | None = Field(default=None, max_length=2000)


class GrantCreate(_Public):
    """A break-glass grant request: one agent, and one tool (``upstream.tool``) or one intent."""

    agent: str = Field(min_length=1, max_length=512, description="the agent's id (workload token `sub`)")
    tool: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9-]{0,31}\.[^\s]{1,200}$")
    intent: str | None = Field(default=None, min_length=1, max_length=64)
    reason: str = Field(min_length=3, max_length=2000, description="why the exception is needed (mandatory)")
    duration_seconds: int = Field(ge=60, description="how long the grant lasts (at most review.max_grant_seconds)")
    overrides_approval: bool = Field(
        default=False, description="also let through steps that need a reviewer's approval (approval: required); "
        "without it such a step stays held")

    @model_validator(mode="after")
    def _one_target(self) -> GrantCreate:
        if (self.intent is None) == (self.tool is None):
            raise ValueError("give exactly one of tool or intent")
        return self


class GrantPublic(_Public):
    id: str
    agent: str
    tool: str | None
    intent: str | None
    reason: str
    created_by: str
    created_at: datetime
    expires_at: datetime
    active: bool = Field(description="usable now: not expired, not revoked")
    revoked_at: datetime | None
    revoked_by: str | None
    uses: int = Field(description="calls let through so far (each is a flagged decision)")
    overrides_approval: bool = Field(default=False, description="it also lets through steps that need approval")
    last_used_decision: str | None
    signed_off_by: str | None
    signed_off_at: datetime | None
    sign_off_note: str | None


def grant_public(g: GrantRecord, now: float) -> GrantPublic:
    return GrantPublic(
        id=g.id, agent=g.agent, tool=g.tool, intent=g.intent, reason=g.reason, created_by=g.created_by,
        created_at=_dt(g.created_at), expires_at=_dt(g.expires_at),
        active=g.revoked_at is None and g.expires_at > now, revoked_at=_dt(g.revoked_at), revoked_by=g.revoked_by,
        uses=g.uses, last_used_decision=g.last_used_decision, signed_off_by=g.signed_off_by,
        signed_off_at=_dt(g.signed_off_at), sign_off_note=g.sign_off_note, overrides_approval=g.overrides_approval,
    )


class GrantList(_Public):
    grants: list[GrantPublic]


class OverviewBucket(_Public):
    start: datetime
    end: datetime
    allow: int
    deny: int
    hold: int
    would_deny: int


class TopEntry(_Public):
    name: str | None = Field(description="null: decisions without one (e.g. no intent)")
    deny: int
    hold: int
    would_deny: int
    total: int


class Backlog(_Public):
    """What waits for reviewers now: the numbers of the ``intentgate_approvals_pending``,
    ``intentgate_grants_active`` and ``intentgate_grants_unsigned`` gauges."""

    pending_approvals: int = Field(description="held calls a reviewer can still approve (pending, not expired)")
    active_grants: int = Field(description="grants neither expired nor revoked")
    unsigned_grants: int = Field(description="grants not signed off yet, whatever their state")


class Overview(_Public):
    """Outcomes over one time range, the top names of what was denied or held in it, and what
    waits for a reviewer now (``GET /v1/overview``, the overview page)."""

    since: datetime
    until: datetime
    range: str | None = Field(description="the relative range asked for, if any")
    bucket_seconds: int
    buckets: list[OverviewBucket]
    totals: dict[str, int] = Field(description="decisions by outcome in the whole range")
    reasons: list[TopEntry] = Field(description="reasons of denied and held decisions, most frequent first")
    agents: list[TopEntry]
    tools: list[TopEntry]
    intents: list[TopEntry]
    distinct: dict[str, int] = Field(description="how many reasons, agents, tools, intents in all")
    backlog: Backlog
    pending_approvals: list[ApprovalPublic] = Field(description="the oldest pending, unexpired approvals (≤ 200)")
    active_grants: list[GrantPublic]
    unsigned_grants: list[GrantPublic] = Field(description="grants not signed off yet (needs review)")


class ReplayRequest(_Public):
    """Which recorded decisions to replay, and against what (default: the gateway's own dirs)."""

    decision_id: str | None = Field(default=None, max_length=40, description="one decision")
    since: datetime | None = Field(default=None, description="decisions at or after this time")
    until: datetime | None = Field(default=None, description="decisions at or before this time")
    policy_dir: str | None = Field(default=None, description="candidate policy directory on the gateway host")
    intents_dir: str | None = Field(default=None, description="candidate intents directory on the gateway host")


def _graph(intent: Intent, record: DecisionRecord, task: Task | None, seq_of: dict[str, int]) -> IntentGraph:
    my_seq = record.seq or 0
    path: list[PathEntry] = []
    before = []
    for i, h in enumerate((task.history or []) if task else [], start=1):
        if h.decision_id == record.id:
            relation: Literal["before", "this", "after"] = "this"
        elif seq_of.get(h.decision_id, my_seq + 1) < my_seq:
            relation = "before"
            before.append(h)
        else:
            relation = "after"
        path.append(PathEntry(position=i, step=h.step, tool=h.tool, decision_id=h.decision_id, decision=h.decision,
                              at=_dt(h.at), relation=relation))
    attempted = record.step if record.kind == "tools/call" else None
    nexts = allowed_next(intent, task.with_history(before)) if task else list(intent.start)
    return _intent_graph(intent, path, attempted, nexts, record.intent_version)


def _intent_graph(intent: Intent, path: list[PathEntry], attempted: str | None, nexts: list[str],
                  decided_version: str | None) -> IntentGraph:
    starts = intent.expand(intent.start)

    def leads_to(name: str) -> list[str]:
        group = intent.group_of(name)
        return intent.expand(intent.groups[group].next if group else intent.steps[name].next)

    steps = [
        GraphStep(
            name=name, tool=step.tool, next=leads_to(name), start=name in starts, terminal=intent.is_terminal(name),
            approval=step.approval, max_calls=step.max_calls, free=step.free, group=intent.group_of(name),
            taken=[p.position for p in path if p.step == name], attempted=name == attempted,
        )
        for name, step in intent.steps.items()
    ]
    return IntentGraph(
        intent=intent.name, version=intent.version, decided_version=decided_version, start=starts, steps=steps,
        groups={name: list(g.steps) for name, g in intent.groups.items()}, path=path, attempted=attempted,
        attempted_known=attempted in intent.steps, allowed_next=nexts,
    )


def intent_graph(intent: Intent) -> IntentGraph:
    """An intent's graph on its own: no task, no decision (``intentgate graph``)."""
    return _intent_graph(intent, [], None, intent.expand(intent.start), None)


# reviewer and operator actions (store.ledger.REVIEW_KINDS): what the record says was done
_ACTION_TEXT = {
    "review/approve": "{who} approved {approval} (held decision {decision_id})",
    "review/reject": "{who} rejected {approval} (held decision {decision_id})",
    "grant/create": "{who} granted break-glass {grant} to {agent} until {expires}",
    "grant/revoke": "{who} revoked grant {grant}",
    "grant/signoff": "{who} signed off grant {grant}",
    "admin/token": "{who} minted a reviewer admin token for {sub}",
    "keys/rotate": "{who} rotated the {keys} signing key",
}


def _subject(arguments: dict[str, Any] | None) -> dict[str, Any]:
    a = arguments or {}
    expires = a.get("expires_at")
    fields = {k: a.get(k, "?") for k in ("approval", "decision_id", "grant", "agent", "sub", "keys")}
    fields["expires"] = _dt(expires).isoformat() if isinstance(expires, int | float) else "?"
    return fields


def build_detail(rows: DecisionDetailRows, intent: Intent | None) -> DecisionDetail:
    """A decision page; ``intent`` is the decision's intent as loaded now (None: no graph)."""
    d, task = rows.decision, rows.task
    graph = _graph(intent, d, task, rows.seq_of) if intent is not None else None
    return DecisionDetail(
        decision=public(d),
        explanation=_ACTION_TEXT[d.kind].format(who=d.agent, **_subject(d.arguments)) if d.kind in _ACTION_TEXT
        else explain(d.reasons, graph.allowed_next if graph and d.outcome != "allow" else []),
        call_outcome=CallOutcomePublic(
            at=_dt(rows.outcome.at), status=rows.outcome.status, latency_ms=rows.outcome.latency_ms,
            detail=rows.outcome.detail, kept=rows.kept,
        ) if rows.outcome else None,
        token=TokenPublic(
            jti=rows.token.jti, status=rows.token.status, audience=rows.token.audience, tool=rows.token.tool,
            issued_at=_dt(rows.token.issued_at), expires_at=_dt(rows.token.expires_at),
            consumed_at=_dt(rows.token.consumed_at), revoked_at=_dt(rows.token.revoked_at),
        ) if rows.token else None,
        task=TaskPublic(
            id=task.id, intent=task.intent, intent_version=task.intent_version, agent=task.agent,
            issuer=task.issuer, params=task.params,
            reason=task.reason, status=task.status, created_at=_dt(task.created_at), expires_at=_dt(task.expires_at),
            ended_at=_dt(task.ended_at),
            history=[HistoryPublic(step=h.step, tool=h.tool, decision=h.decision, decision_id=h.decision_id,
                                   at=_dt(h.at)) for h in task.history],
        ) if task else None,
        approvals=[
            approval_public(a) for a in rows.approvals
        ],
        graph=graph,
    )
