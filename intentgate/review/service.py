"""What reviewers read and do, shared by the REST API and the CLI: search, one decision,
export; approve or reject held calls; break-glass grants; what-if replay.

A :class:`ReviewService` reads through its own :class:`~intentgate.store.Store` (its own
connections and worker, never SQLite's inline path), so a long search or export never runs on
the event loop nor queues in front of the decision path's writes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from sqlalchemy import Connection

from ..clock import Clock, SystemClock
from ..config import GatewayConfig
from ..decide import new_id
from ..errors import ConfigError
from ..identity import IdentityVerifier
from ..intents import IntentRegistry, load_intents
from ..keys import KeySet
from ..policy import make_engine
from ..replay import ReplayReport, Replayer
from ..store import ApprovalRecord, DecisionRecord, GrantRecord, Store
from ..store.overview import OverviewRows
from ..store.overview import overview as overview_rows
from ..store.queries import ReviewBacklog, pending_approvals, review_backlog
from .auth import Reviewer, ReviewerAuth
from .models import (
    ApprovalPublic,
    DecisionDetail,
    DecisionPage,
    DecisionPublic,
    DecisionQuery,
    GrantCreate,
    GrantPublic,
    ReplayRequest,
    approval_public,
    build_detail,
    epoch,
    grant_public,
    public,
    summary,
)
from .overview import Overview, OverviewQuery, build_overview, resolve

__all__ = ["ReviewService"]


class ReviewService:
    """Read-side operations over one store, with the intents loaded now (for graphs)."""

    def __init__(
        self,
        store: Store,
        intents: Callable[[], IntentRegistry | None],
        *,
        auth: ReviewerAuth | None = None,
        owns_store: bool = True,
        config: GatewayConfig | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self._intents = intents
        self.auth = auth
        self._owns_store = owns_store
        self.config = config or GatewayConfig()
        self.clock = clock or SystemClock()
        # called after a grant is created or revoked (the gateway's decider caches who holds one)
        self.on_grants_changed: Callable[[], None] | None = None

    @classmethod
    def open(
        cls,
        config: GatewayConfig,
        intents: Callable[[], IntentRegistry | None],
        *,
        agents: IdentityVerifier | None = None,
        clock: Clock | None = None,
        with_auth: bool = True,
    ) -> ReviewService:
        """Open a reader store on ``config``'s database; with ``with_auth``, the reviewer check too."""
        clock = clock or SystemClock()
        auth = None
        if with_auth:
            admin_keys = KeySet.open_or_create(config.admin_keys_dir, clock=clock) if config.review.admin_tokens else None
            auth = ReviewerAuth(config.review, admin_keys=admin_keys, agents=agents, clock=clock)
        store = Store.open(
            config.database_url, timeout=config.store.timeout_seconds, pool_size=2, inline=False,
            sqlite_synchronous=config.store.sqlite_synchronous,
        )
        return cls(store, intents, auth=auth, config=config, clock=clock)

    def close(self) -> None:
        if self._owns_store:
            self.store.close()

    async def search(self, query: DecisionQuery) -> DecisionPage:
        records, next_before = await self.store.search_decisions(query.to_filter())
        return DecisionPage(items=[summary(r) for r in records], next_before=next_before)

    async def matching(self, query: DecisionQuery, *, batch: int = 500) -> AsyncIterator[list[DecisionPublic]]:
        """Every decision matching ``query``'s filters (its paging ignored), newest first, whole
        records in batches: the filtered export.  It ends at the newest match when it started."""
        f = replace(query.to_filter(), full=True, limit=batch, before_seq=None)
        while True:
            records, next_before = await self.store.search_decisions(f)
            if records:
                yield [public(r) for r in records]
            if next_before is None:
                return
            f = replace(f, before_seq=next_before)

    async def overview(self, query: OverviewQuery, *, top: int = 10) -> Overview:
        """Outcomes over ``query``'s range, the ``top`` reasons, agents, tools and intents of what
        was denied or held in it, and the pending approvals, active and unsigned grants now."""
        now = self.clock.now()
        since, until, width, edges = resolve(query, now)

        def read(conn: Connection) -> tuple[OverviewRows, ReviewBacklog, list[ApprovalRecord]]:
            return overview_rows(conn, edges, top=top), review_backlog(conn, now), pending_approvals(conn, now)

        rows, backlog, pending = await self.store.db.run(read, read_only=True)
        return build_overview(
            rows, range_name=None if query.since else (query.range or "24h"), width=width, backlog=backlog,
            approvals=[approval_public(a) for a in pending], active=await self.grants(active=True),
            unsigned=await self.grants(needs_review=True),
        )

    async def detail(self, decision_id: str) -> DecisionDetail | None:
        rows = await self.store.decision_detail(decision_id)
        if rows is None:
            return None
        registry = self._intents()
        intent = registry.get(rows.decision.intent) if registry is not None and rows.decision.intent else None
        return build_detail(rows, intent)

    async def export_bounds(self, *, since: datetime | None, after_seq: int) -> tuple[int, int]:
        """(newest seq now, how many decisions an export started now yields)."""
        upto = await self.store.last_seq()
        return upto, await self.store.count_from(after_seq=after_seq, upto_seq=upto, since=epoch(since))

    async def export(
        self, *, since: datetime | None = None, after_seq: int = 0, upto_seq: int | None = None, batch: int = 1000
    ) -> AsyncIterator[list[DecisionPublic]]:
        """Every decision after ``after_seq`` (and at or after ``since``) in seq order, in batches.

        The export ends at the newest decision when it started (``upto_seq``): a consumer that
        wants more asks again with ``after_seq`` = the last seq it got.
        """
        async for records in self.store.decision_batches(since=epoch(since), after_seq=after_seq, upto_seq=upto_seq,
                                                         batch=batch):
            yield [public(r) for r in records]

    # ----- approvals ----------------------------------------------------------------
    async def approvals(self, *, status: str | None = "pending", limit: int = 200) -> list[ApprovalPublic]:
        return [approval_public(a) for a in await self.store.list_approvals(status=status, limit=limit)]

    async def decide_approval(
        self, approval_id: str, *, approve: bool, reviewer: Reviewer, note: str | None = None
    ) -> ApprovalPublic:
        """Approve or reject once; raises ``ApprovalConflict`` (unknown / expired / already decided)."""
        decided = await self.store.decide_approval(
            approval_id, approve=approve, reviewer=reviewer.id, now=self.clock.now(), note=note
        )
        return approval_public(decided)

    # ----- break-glass grants -------------------------------------------------------
    async def create_grant(self, request: GrantCreate, *, reviewer: Reviewer) -> GrantPublic:
        """A time-boxed exception; ``ValueError`` when it is longer than the configured maximum."""
        longest = self.config.review.max_grant_seconds
        if request.duration_seconds > longest:
            raise ValueError(f"duration_seconds is at most {longest} (review.max_grant_seconds)")
        now = self.clock.now()
        grant = GrantRecord(
            id=new_id("grt"), agent=request.agent, tool=request.tool, intent=request.intent, reason=request.reason,
            created_by=reviewer.id, created_at=now, expires_at=now + request.duration_seconds,
            overrides_approval=request.overrides_approval,
        )
        created = await self.store.grants.create(grant)
        if self.on_grants_changed is not None:
            self.on_grants_changed()
        return grant_public(created, now)

    async def grants(self, *, needs_review: bool = False, active: bool = False) -> list[GrantPublic]:
        now = self.clock.now()
        found = await self.store.grants.list(needs_review=needs_review, active_at=now if active else None)
        return [grant_public(g, now) for g in found]

    async def sign_off_grant(self, grant_id: str, *, reviewer: Reviewer, note: str | None = None) -> GrantPublic:
        now = self.clock.now()
        return grant_public(await self.store.grants.sign_off(grant_id, reviewer=reviewer.id, now=now, note=note), now)

    async def revoke_grant(self, grant_id: str, *, reviewer: Reviewer) -> GrantPublic:
        now = self.clock.now()
        revoked = await self.store.grants.revoke(grant_id, reviewer=reviewer.id, now=now)
        if self.on_grants_changed is not None:
            self.on_grants_changed()
        return grant_public(revoked, now)

    # ----- what-if replay ----------------------------------------------------------
    async def replay(self, request: ReplayRequest, *, progress: Callable[[int], None] | None = None) -> ReplayReport:
        """Re-decide recorded decisions against a candidate policy and intents (default: the
        configured dirs, read anew); nothing is written.  Raises ``ConfigError`` for a bad
        candidate and ``LookupError`` for an unknown decision id."""
        policy_dir = Path(request.policy_dir) if request.policy_dir else self.config.policy_dir
        intents_dir = Path(request.intents_dir) if request.intents_dir else self.config.intents_dir
        for label, path in (("policy", policy_dir), ("intents", intents_dir)):
            if not path.is_dir():
                raise ConfigError(f"{label} directory {str(path)!r} does not exist")
        registry = load_intents(intents_dir, default_begin=self.config.tasks.begin)
        engine = make_engine("embedded", policy_dir=policy_dir, intents_doc=registry.data_document(),
                             environment=self.config.environment)
        try:
            replayer = Replayer(self.store, registry, engine, environment=self.config.environment)
            if request.decision_id:
                record = await self.store.get_decision(request.decision_id)
                if record is None:
                    raise LookupError(request.decision_id)
                records: list[DecisionRecord] | object = [record]
            else:
                records = self.store.decision_batches(since=epoch(request.since))
            return await replayer.replay(records, until=epoch(request.until), progress=progress)
        finally:
            await engine.aclose()
