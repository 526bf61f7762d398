"""The overview page: outcomes over time as an inline SVG bar chart (no scripts, no external
assets: sizes are SVG attributes, colours classes of the stylesheet, so the pages' CSP holds),
the top reasons, agents, tools and intents of what was denied or held, and what waits for a
reviewer.  Every number links to the inbox filtered to the decisions it counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from ..errors import GatewayError
from ..review.overview import RANGES, Overview, OverviewQuery
from .render import form_errors, render, service_of, unavailable
from .session import SessionDep

__all__ = ["router"]

router = APIRouter(prefix="/ui", include_in_schema=False)

LABELS = {"range": "Last", "since": "From", "until": "Until"}
SERIES = (("deny", "denied"), ("hold", "held"), ("would_deny", "would deny (shadow)"), ("allow", "allowed"))
REFRESH = (0, 30, 60, 300)  # auto-refresh choices in seconds (a <meta> refresh: no script)

# chart geometry (SVG user units)
LEFT, WIDTH, ROW, GAP, AXIS = 150, 960, 54, 12, 22


def _iso(value: datetime) -> str:
    """A time as the inbox's datetime-local fields take it (UTC, whole seconds, no offset)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def inbox_link(ov: Overview, *, start: datetime | None = None, end: datetime | None = None, **filters: str) -> str:
    """The inbox filtered to ``filters`` between ``start`` and ``end`` (default: the range)."""
    params = {**filters, "since": _iso(start or ov.since), "until": _iso(end or ov.until)}
    return f"/ui/decisions?{urlencode(params)}"


@dataclass
class Bar:
    x: float
    y: float
    w: float
    h: float
    count: int
    title: str
    href: str


@dataclass
class Series:
    outcome: str
    label: str
    top: float  # the row's top edge
    peak: int
    bars: list[Bar] = field(default_factory=list)


@dataclass
class Chart:
    width: int
    height: int
    series: list[Series]
    ticks: list[tuple[float, str]]  # (x, label) under the last row
    axis_y: float
    left: int = LEFT


def _label(value: datetime, width: int) -> str:
    return value.strftime("%H:%M" if width < 3600 else "%m-%d %H:%M" if width < 86400 else "%Y-%m-%d")


def chart(ov: Overview) -> Chart:
    """One row of bars per outcome (each scaled to its own peak, so a handful of denials is
    visible next to thousands of allows), one bar per bucket; allows and shadow denials only
    when there are any.  Every bucket gets the same slot, the first and the last too although
    the range's ends cut them short: a bucket that has only just begun is still a bar one can
    see and click, not a sliver."""
    shown = [(o, label) for o, label in SERIES if o in ("deny", "hold") or ov.totals.get(o)]
    slot = (WIDTH - LEFT) / max(len(ov.buckets), 1)
    series: list[Series] = []
    for row, (outcome, label) in enumerate(shown):
        top = row * (ROW + GAP)
        peak = max((getattr(b, outcome) for b in ov.buckets), default=0)
        s = Series(outcome, label, top, peak)
        for i, b in enumerate(ov.buckets):
            x = LEFT + i * slot
            w = max(slot - 1.0, 1.0)
            n = getattr(b, outcome)
            h = n / peak * (ROW - 4) if peak else 0.0
            s.bars.append(Bar(round(x, 1), round(top + ROW - h, 1), round(w, 1), round(h, 1), n,
                              f"{n} {label}, {b.start:%Y-%m-%d %H:%M}–{b.end:%H:%M} UTC",
                              inbox_link(ov, start=b.start, end=b.end, outcome=outcome)))
        series.append(s)
    axis_y = len(shown) * (ROW + GAP)
    every = max(1, round(len(ov.buckets) / 8))
    ticks = [(bar.x, _label(b.start, ov.bucket_seconds))
             for i, (b, bar) in enumerate(zip(ov.buckets, series[0].bars, strict=True)) if i % every == 0]
    return Chart(WIDTH, int(axis_y + AXIS), series, ticks, axis_y)


@router.get("/overview")
async def overview(request: Request, session: SessionDep) -> Response:
    """Counts and a time series of outcomes, top lists and what waits, for one time range."""
    raw = {k: request.query_params.get(k, "").strip() for k in ("range", "since", "until", "refresh")}
    errors: list[str] = []
    ov = None
    refresh = int(raw["refresh"]) if raw["refresh"] in {str(r) for r in REFRESH} else 0
    try:
        query = OverviewQuery(**{k: v for k, v in raw.items() if v and k != "refresh"})
    except ValidationError as exc:
        errors = form_errors(exc, LABELS)
    else:
        try:
            ov = await service_of(request).overview(query)
        except GatewayError as exc:
            return await unavailable(request, session, exc)
    context: dict[str, Any] = {}
    if ov is not None:
        context = {"chart": chart(ov), "link": lambda **f: inbox_link(ov, **f)}
    return await render(
        request, "overview.html", session, status_code=422 if errors else 200, title="Overview", filters=raw,
        ranges=list(RANGES), refresh=refresh, refresh_choices=REFRESH, ov=ov, errors=errors,
        series=SERIES, **context,
    )
