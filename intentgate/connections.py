"""Agents' MCP connections as the front knows them: log level, resource subscriptions, the
URL-mode elicitations put to each, and a way to notify each one outside a request (resource
updates, list changes, elicitation completions).

One entry per live connection (an HTTP session or a stdio process), held weakly: when the
SDK drops a connection, its entry, level and subscriptions go with it.  The entry is keyed
by the SDK's connection object, which ``ServerSession`` does not expose publicly; a session
without one gets its own entry per request (nothing persists, nothing leaks).
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field
from typing import Any

import mcp_types as types

__all__ = ["LEVELS", "AgentConnection", "Connections", "level_allows"]

log = logging.getLogger("intentgate.connections")

MAX_ELICITATIONS = 64  # URL-mode elicitations awaiting completion, per connection

LEVELS: tuple[str, ...] = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")


def level_allows(threshold: str | None, level: str) -> bool:
    """True when a message at ``level`` passes a ``logging/setLevel`` threshold (none: all pass)."""
    if threshold is None or threshold not in LEVELS:
        return True
    return LEVELS.index(level) >= LEVELS.index(threshold) if level in LEVELS else True


@dataclass(eq=False)
class AgentConnection:
    agent: str
    session: Any  # the latest ServerSession of this connection (its standalone channel notifies)
    log_level: str | None = None
    subscriptions: set[tuple[str, str]] = field(default_factory=set)  # (upstream, upstream's own URI)
    # URL-mode elicitations put to this connection and not yet complete: (upstream, elicitationId),
    # oldest first; only these get that upstream's notifications/elicitation/complete
    elicitations: dict[tuple[str, str], None] = field(default_factory=dict)

    def elicited(self, upstream: str, elicitation_id: str) -> None:
        """A URL-mode elicitation of ``upstream`` was put to this connection (the newest
        ``MAX_ELICITATIONS`` are remembered: a completion for an older one goes nowhere)."""
        self.elicitations[(upstream, elicitation_id)] = None
        while len(self.elicitations) > MAX_ELICITATIONS:
            del self.elicitations[next(iter(self.elicitations))]

    async def notify(self, notification: types.ServerNotification) -> bool:
        """Send outside any request; False when the connection is gone (the caller drops it)."""
        try:
            await self.session.send_notification(notification)
            return True
        except Exception as exc:  # noqa: BLE001 - a closed stream, a dead client
            log.debug("notification to %s not delivered: %s", self.agent, type(exc).__name__)
            return False


class Connections:
    def __init__(self) -> None:
        self._by_key: weakref.WeakKeyDictionary[Any, AgentConnection] = weakref.WeakKeyDictionary()

    def of(self, ctx: Any, agent: str) -> AgentConnection:
        """This request's connection entry (made on first sight; the agent must stay the same)."""
        session = ctx.session
        key = getattr(session, "_connection", None)
        if key is None:
            return AgentConnection(agent=agent, session=session)
        conn = self._by_key.get(key)
        if conn is None or conn.agent != agent:  # sessions are bound to their agent (see sessions)
            conn = AgentConnection(agent=agent, session=session)
            self._by_key[key] = conn
        conn.session = session
        return conn

    def all(self) -> list[AgentConnection]:
        return list(self._by_key.values())

    def subscribers(self, upstream: str, uri: str) -> list[AgentConnection]:
        return [c for c in self._by_key.values() if (upstream, uri) in c.subscriptions]

    def subscribed(self, upstream: str, uri: str) -> bool:
        return bool(self.subscribers(upstream, uri))
