"""The reviewer overview: outcomes over time, the top reasons, agents, tools and intents of
what was denied or held, and what waits for a reviewer (pending approvals, active and
unsigned break-glass grants), for one time range.

``OverviewQuery`` is the range as asked (a relative ``range`` ending now, or ``since`` /
``until``); :func:`resolve` turns it into epoch bounds and bucket edges; ``Overview``
(:mod:`.models`) is the answer ``GET /v1/overview`` returns and the UI renders (the store part
comes from :mod:`intentgate.store.overview`).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..store.overview import OverviewRows, Tally
from ..store.queries import ReviewBacklog
from .models import ApprovalPublic, Backlog, GrantPublic, Overview, OverviewBucket, TopEntry, epoch

__all__ = ["RANGES", "Overview", "OverviewBucket", "OverviewQuery", "TopEntry", "build_overview", "resolve"]

# relative ranges: name -> seconds (also the inbox's "last" choices)
RANGES: dict[str, int] = {"1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400}
RangeName = Literal["1h", "6h", "24h", "7d", "30d"]
MAX_BUCKETS = 48
# bucket widths, smallest first: a range gets the smallest that needs at most MAX_BUCKETS
_WIDTHS = (60, 300, 600, 900, 1800, 3600, 2 * 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 7 * 86400)


class OverviewQuery(BaseModel):
    """The time range of an overview: ``since`` (and ``until``, default now), or else the
    relative ``range`` ending now (default 24h)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    range: RangeName | None = Field(default=None, description="last 1h, 6h, 24h, 7d or 30d (until now)")
    since: datetime | None = Field(default=None, description="from (RFC 3339; UTC if no offset)")
    until: datetime | None = Field(default=None, description="until (default: now)")

    @model_validator(mode="after")
    def _ordered(self) -> OverviewQuery:
        if self.since is not None and self.until is not None and epoch(self.until) <= epoch(self.since):
            raise ValueError("until must be later than since")
        return self


def resolve(query: OverviewQuery, now: float) -> tuple[float, float, int, list[float]]:
    """(since, until, bucket width in seconds, bucket edges): edges at whole multiples of the
    width (UTC), between the range's own ends, so that labels read 10:00, 10:30, …"""
    until = epoch(query.until) if query.until is not None else now
    since = epoch(query.since) if query.since is not None else until - RANGES[query.range or "24h"]
    if until <= since:
        raise ValueError("until must be later than since")
    span = until - since
    width = next((w for w in _WIDTHS if span / w <= MAX_BUCKETS), None) or math.ceil(span / MAX_BUCKETS / 86400) * 86400
    inner = range(math.floor(since / width) + 1, math.ceil(until / width))
    return since, until, width, [since, *(float(k * width) for k in inner), until]


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def _entries(tallies: list[Tally]) -> list[TopEntry]:
    return [TopEntry(name=t.name, deny=t.deny, hold=t.hold, would_deny=t.would_deny, total=t.total) for t in tallies]


def build_overview(rows: OverviewRows, *, range_name: str | None, width: int, backlog: ReviewBacklog,
                   approvals: list[ApprovalPublic], active: list[GrantPublic], unsigned: list[GrantPublic]) -> Overview:
    edges = rows.edges
    return Overview(
        since=_dt(edges[0]), until=_dt(edges[-1]), range=range_name, bucket_seconds=width,
        buckets=[OverviewBucket(start=_dt(edges[i]), end=_dt(edges[i + 1]), **b) for i, b in enumerate(rows.buckets)],
        totals=rows.totals, reasons=_entries(rows.reasons), agents=_entries(rows.agents), tools=_entries(rows.tools),
        intents=_entries(rows.intents), distinct=rows.distinct,
        backlog=Backlog(pending_approvals=backlog.pending_approvals, active_grants=backlog.active_grants,
                        unsigned_grants=backlog.unsigned_grants),
        pending_approvals=approvals, active_grants=active,
        unsigned_grants=unsigned,
    )
