"""Per-agent rate limiting: a token bucket per agent id, in this gateway process.

Each agent may make ``rate`` decisions per second on average, with bursts of up to ``burst``.
A call over the limit is refused (and recorded) as ``rate_limited`` before any other work.
The buckets live in one process: with several replicas each enforces its own share.
"""

from __future__ import annotations

from collections import OrderedDict

from .clock import Clock

__all__ = ["RateLimiter"]


class RateLimiter:
    """Token buckets keyed by agent id; at most ``max_agents`` are remembered (least recent go)."""

    def __init__(self, rate: float, burst: int, clock: Clock, *, max_agents: int = 100_000) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self.max_agents = max_agents
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, agent: str) -> bool:
        """Take one token from the agent's bucket; False when it is empty."""
        now = self.clock.now()
        tokens = self._refilled(self._buckets.pop(agent, None), now)
        allowed = tokens >= 1.0
        self._buckets[agent] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._buckets) > self.max_agents:
            self._buckets.popitem(last=False)
        return allowed

    def wait(self, agent: str) -> float:
        """Seconds until the agent's bucket holds a token again (0 when it does): a ``Retry-After``."""
        tokens = self._refilled(self._buckets.get(agent), self.clock.now())
        return max(0.0, (1.0 - tokens) / self.rate)

    def _refilled(self, bucket: tuple[float, float] | None, now: float) -> float:
        """The tokens a bucket ``(tokens, last)`` holds at ``now`` (a new one: full)."""
        if bucket is None:
            return self.burst
        tokens, last = bucket
        return min(self.burst, tokens + max(0.0, now - last) * self.rate)
