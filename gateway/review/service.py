"""What reviewers read, shared by the REST API and the CLI: search, one decision, export.

A :class:`ReviewService` reads through its own :class:`~gateway.store.Store` (its own
connections and worker, never SQLite's inline path), so a long search or export never runs on
the event loop nor queues in front of the decision path's writes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime

from ..clock import Clock, SystemClock
from ..config import GatewayConfig
from ..identity import IdentityVerifier
from ..intents import IntentRegistry
from ..keys import KeySet
from ..store import Store
from .auth import ReviewerAuth
from .models import DecisionDetail, DecisionPage, DecisionPublic, DecisionQuery, build_detail, epoch, public, summary

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
    ) -> None:
        self.store = store
        self._intents = intents
        self.auth = auth
        self._owns_store = owns_store

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
        return cls(store, intents, auth=auth)

    def close(self) -> None:
        if self._owns_store:
            self.store.close()

    async def search(self, query: DecisionQuery) -> DecisionPage:
        records, next_before = await self.store.search_decisions(query.to_filter())
        return DecisionPage(items=[summary(r) for r in records], next_before=next_before)

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
        upto = await self.store.last_seq() if upto_seq is None else upto_seq
        last, start = after_seq, epoch(since)
        while True:
            records = await self.store.decisions_from(after_seq=last, upto_seq=upto, since=start, limit=batch)
            if not records:
                return
            yield [public(r) for r in records]
            last = records[-1].seq or last
