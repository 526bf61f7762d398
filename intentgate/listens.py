"""Agents' ``subscriptions/listen`` streams to the gateway (2026-07-28).

An agent on 2026-07-28 is told of changes only on a stream it opens for them: there is no
``resources/subscribe``.  Each stream is served by the MCP SDK's own ``ListenHandler`` (the
acknowledgment first, every frame stamped with the subscription id, only the event kinds
asked for), on a bus of that agent's own, so that what one agent is told never reaches
another's stream.  The front decides each resource URI a stream asks for as it decides a
``resources/subscribe`` (a read of that resource by the Rego policy, recorded) and
acknowledges only those allowed, which the protocol permits (the acknowledgment names the
subset honoured); for those it subscribes upstream as for any subscriber and lets go when
the stream ends.  What the upstreams tell the gateway is published here: a resource update to
every agent's bus (a stream gets it only if its acknowledged URIs name it), a list change to
the buses of the agents whose intents use that upstream.  Each agent may hold
``front.max_sessions_per_agent`` streams open at once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ServerEvent

__all__ = ["Listens"]


class Listens:
    """Every agent's listen handler and bus, and how many streams hold each upstream resource."""

    def __init__(self, max_per_agent: int) -> None:
        self.max_per_agent = max_per_agent
        self._handlers: dict[str, tuple[ListenHandler, InMemorySubscriptionBus]] = {}
        self.holding: Counter[tuple[str, str]] = Counter()  # (upstream, upstream's URI) -> open streams

    def handler(self, agent: str) -> ListenHandler:
        if agent not in self._handlers:
            bus = InMemorySubscriptionBus()
            self._handlers[agent] = (ListenHandler(bus, max_subscriptions=self.max_per_agent), bus)
        return self._handlers[agent][0]

    def holds(self, upstream: str, uri: str) -> bool:
        return self.holding[(upstream, uri)] > 0

    def agents(self) -> list[str]:
        return list(self._handlers)

    async def publish(self, event: ServerEvent, agents: Iterable[str] | None = None) -> None:
        """``event`` to the buses of ``agents`` (every agent's when None)."""
        for agent in list(self._handlers) if agents is None else agents:
            entry = self._handlers.get(agent)
            if entry is not None:
                await entry[1].publish(event)
