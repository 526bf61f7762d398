"""Prometheus metrics of one gateway process (``GET /metrics``).

The store reports every committed decision and token event to :class:`Metrics` (it is the
one place every decision passes through); the front reports upstream errors.  Each gateway
has its own registry, so several gateways in one process (tests) do not share counters.
Label values are bounded: reason codes without their detail, intent names from the
registry (``none`` for decisions of no intent), outcomes from a closed set, upstream names
from the configuration.  ``intentgate_build_info`` says which version answers.  Token
redemptions turned away at the door (``gateway.redeem``) are counted here and nowhere else:
they are not decisions, so that a flood of them cannot grow the decision log.
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .errors import ReasonCode
from .store import DecisionRecord

__all__ = ["CONTENT_TYPE_LATEST", "REDEEM_DOOR_CODES", "Metrics"]

_CODES = {c.value for c in ReasonCode}
# why a redemption is turned away at the door (gateway.redeem): the bounded `reason` label
REDEEM_DOOR_CODES = (ReasonCode.UNAUTHENTICATED, ReasonCode.REDEEMER_NOT_PERMITTED, ReasonCode.RATE_LIMITED)
NO_INTENT = "none"  # the intent label of decisions that belong to no intent (reads, sessions): never empty
disable_created_metrics()  # no *_created series: a scraper sees the counters, not their birth times
# decision latency buckets, in seconds: 100 µs .. 1 s
_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


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

    def render(self) -> bytes:
        return generate_latest(self.registry)
