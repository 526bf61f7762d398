"""Prometheus metrics of one gateway process (``GET /metrics``).

The store reports every committed decision and token event to :class:`Metrics` (it is the
one place every decision passes through); the front reports upstream errors.  Each gateway
has its own registry, so several gateways in one process (tests) do not share counters.
Label values are bounded: reason codes without their detail, intent names from the
registry (``none`` for decisions of no intent), outcomes from a closed set, upstream names
from the configuration, agent ids only on the sessions gauge and only for the
:data:`SESSION_AGENTS` agents holding the most (the rest are ``other``); no label is ever
empty.  ``intentgate_build_info`` says which version answers.  Token redemptions turned away
at the door (``intentgate.redeem``) are counted here and nowhere else: they are not decisions, so
that a flood of them cannot grow the decision log.

What awaits reviewers (pending approvals, active and unsigned grants) is read from the store
at each scrape (:meth:`Metrics.scrape`), not counted in the process: it is right after a
restart, and every replica sharing a database reports the same.  Open MCP sessions are this
process's own.
"""

from __future__ import annotations

import asyncio
import logging
import platform
import time
from collections.abc import Iterator, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from .errors import GatewayError, ReasonCode
from .store import DecisionRecord, Store
from .store.queries import ReviewBacklog, review_backlog

if TYPE_CHECKING:
    from .sessions import SessionGuard

__all__ = ["CONTENT_TYPE_LATEST", "REDEEM_DOOR_CODES", "SESSION_AGENTS", "Metrics"]

log = logging.getLogger("intentgate.metrics")

_CODES = {c.value for c in ReasonCode}
# why a redemption is turned away at the door (intentgate.redeem): the bounded `reason` label
REDEEM_DOOR_CODES = (ReasonCode.UNAUTHENTICATED, ReasonCode.REDEEMER_NOT_PERMITTED, ReasonCode.RATE_LIMITED)
NO_INTENT = "none"  # the intent label of decisions that belong to no intent (reads, sessions): never empty
disable_created_metrics()  # no *_created series: a scraper sees the counters, not their birth times
# decision latency buckets, in seconds: 100 µs .. 1 s
_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
SESSION_AGENTS = 10  # agents named on intentgate_sessions; the others are summed as "other"


class _Now(Collector):
    """Gauges of the moment: set for one rendering by :meth:`Metrics.render`, absent otherwise
    (no value rather than a stale one)."""

    def __init__(self) -> None:
        self.backlog: ReviewBacklog | None = None
        self.sessions: Mapping[str, int] | None = None

    @staticmethod
    def _backlog(backlog: ReviewBacklog | None) -> Iterator[Metric]:
        for name, doc, field in (
            ("intentgate_approvals_pending", "Held calls awaiting a reviewer (pending, not expired)",
             "pending_approvals"),
            ("intentgate_grants_active", "Break-glass grants neither expired nor revoked", "active_grants"),
            ("intentgate_grants_unsigned", "Grants not yet signed off by a reviewer", "unsigned_grants"),
        ):
            yield GaugeMetricFamily(name, doc, value=getattr(backlog, field) if backlog else None)

    @staticmethod
    def _sessions(sessions: Mapping[str, int]) -> Metric:
        family = GaugeMetricFamily("intentgate_sessions", "Open MCP sessions of this process, by agent (the "
                                   f"{SESSION_AGENTS} holding the most; the rest as other)", labels=["agent"])
        for agent, count in sorted(sessions.items()):
            family.add_metric([agent or "unknown"], count)
        return family

    def describe(self) -> Iterator[Metric]:
        yield from self._backlog(None)
        yield self._sessions({})

    def collect(self) -> Iterator[Metric]:
        if self.backlog is not None:
            yield from self._backlog(self.backlog)
        if self.sessions is not None:
            yield self._sessions(self.sessions)


class Metrics:
    """Counters and the decision-latency histogram; implements the store's event sink."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.decisions = Counter("intentgate_decisions", "Decisions recorded, by kind, outcome and intent",
                                 ["kind", "outcome", "intent"], registry=r)
        self.reasons = Counter("intentgate_decision_reasons", "Reason codes of recorded decisions",
                               ["outcome", "reason"], registry=r)
        self.latency = Histogram("intentgate_decision_seconds", "Time to decide a tool call (pipeline, commit "
                                 "included)", ["outcome"], buckets=_BUCKETS, registry=r)
        self.tokens = Counter("intentgate_tokens", "Action tokens by event", ["event"], registry=r)
        self.upstream_errors = Counter("intentgate_upstream_errors", "Failed forwards to upstreams",
                                       ["upstream", "reason"], registry=r)
        self.redeem_turned_away = Counter(
            "intentgate_redeem_turned_away", "Token redemptions refused before the token was looked at (not in the "
            "decision log), by reason", ["reason"], registry=r)
        self.upstream_calls = Histogram("intentgate_upstream_call_seconds", "Forwarded tool calls, from forward to "
                                        "answer, by upstream and outcome", ["upstream", "status"], registry=r)
        self.tree_size = Gauge("intentgate_audit_tree_size", "Decisions sealed into the audit log's Merkle tree, "
                               "as of this process's newest checkpoint", registry=r)
        self.publish_failures = Counter("intentgate_checkpoint_publish_failures", "Checkpoints a sink did not take "
                                        "(retried with the newest at the next round), by sink", ["sink"], registry=r)
        try:
            release = version("intentgate")
        except PackageNotFoundError:  # a checkout that was never installed
            release = "unknown"
        Info("intentgate_build", "The IntentGate release and Python that serve", registry=r).info(
            {"version": release, "python": platform.python_version()})
        for event in ("minted", "consumed", "revoked"):
            self.tokens.labels(event)  # present (at 0) from the start
        for code in REDEEM_DOOR_CODES:
            self.redeem_turned_away.labels(code.value)
        self._now = _Now()
        r.register(self._now)
        self._backlog_lock = asyncio.Lock()
        self._backlog_read_at: float | None = None  # time.monotonic() of the last read of the backlog
        self._backlog_cached: ReviewBacklog | None = None

    # ----- store events ---------------------------------------------------------------
    def decision(self, record: DecisionRecord) -> None:
        self.decisions.labels(record.kind, record.outcome, record.intent or NO_INTENT).inc()
        for text in record.reasons:
            code = text.split(":", 1)[0]
            self.reasons.labels(record.outcome, code if code in _CODES else "other").inc()
        if record.kind == "tools/call" and record.timings_us:
            self.latency.labels(record.outcome).observe(sum(record.timings_us.values()) / 1e6)
        if record.token_jti is not None:
            self.tokens.labels("minted").inc()

    def checkpoint(self, size: int) -> None:
        self.tree_size.set(size)

    def publish_failed(self, sink: str) -> None:
        self.publish_failures.labels(sink).inc()

    def tokens_revoked(self, count: int) -> None:
        if count:
            self.tokens.labels("revoked").inc(count)

    def token_consumed(self) -> None:
        self.tokens.labels("consumed").inc()

    # ----- front events -----------------------------------------------------------------
    def redeem_refused(self, code: ReasonCode) -> None:
        self.redeem_turned_away.labels(code.value if code in REDEEM_DOOR_CODES else "other").inc()

    def upstream_error(self, upstream: str, code: ReasonCode) -> None:
        self.upstream_errors.labels(upstream, code.value).inc()

    def upstream_call(self, upstream: str, status: str, seconds: float) -> None:
        self.upstream_calls.labels(upstream, status).observe(seconds)

    async def scrape(self, store: Store, now: float, sessions: SessionGuard | None = None, *,
                     max_age: float = 0.0) -> bytes:
        """The exposition with what awaits reviewers read from ``store`` at ``now`` (left out,
        and logged, when the store cannot answer) and the open sessions of ``sessions``.

        The backlog is read at most once per ``max_age`` seconds, however many scrapes arrive
        (concurrent ones wait for the same read), so that scraping cannot load the database;
        a read that failed is not retried before then either."""
        async with self._backlog_lock:
            if self._backlog_read_at is None or time.monotonic() - self._backlog_read_at >= max_age:
                self._backlog_cached = None
                try:
                    self._backlog_cached = await store.db.run(lambda conn: review_backlog(conn, now), read_only=True)
                except GatewayError as exc:
                    log.warning("metrics: the review backlog could not be read: %s", exc.message)
                self._backlog_read_at = time.monotonic()
            backlog = self._backlog_cached
        return self.render(backlog, sessions.by_agent(SESSION_AGENTS) if sessions is not None else None)

    def render(self, backlog: ReviewBacklog | None = None, sessions: Mapping[str, int] | None = None) -> bytes:
        self._now.backlog, self._now.sessions = backlog, sessions
        try:
            return generate_latest(self.registry)
        finally:
            self._now.backlog = self._now.sessions = None
