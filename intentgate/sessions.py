"""MCP sessions on the HTTP front belong to the agent that opened them.

The SDK's session manager binds a session to the principal of ``scope["user"]`` and answers
a request on it with another principal exactly as for an unknown session (404); the gateway
puts the verified workload identity there (:func:`authenticated_user`).  This module adds
what the SDK does not do per principal: a cap on the sessions one agent holds open and on
how fast it opens them, so one agent cannot use up the process's sessions for everyone, and
remembers who opened each session, so that a request on another agent's session is recorded.

Everything here lives in one gateway process, like the sessions themselves.
"""

from __future__ import annotations

import secrets
from collections import Counter, OrderedDict
from typing import Any

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.streamable_http import EventMessage, EventStore
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

from .clock import Clock
from .errors import ReasonCode
from .identity import AgentIdentity
from .ratelimit import RateLimiter

__all__ = ["OTHER_AGENTS", "SessionEvents", "SessionGuard", "SessionManager", "authenticated_user"]

OTHER_AGENTS = "other"  # the agents beyond the top ones, in :meth:`SessionGuard.by_agent`


def authenticated_user(agent: AgentIdentity) -> AuthenticatedUser:
    """The SDK's view of a verified agent: its principal is (agent id, issuer, agent id).
    The bearer token itself is not kept."""
    return AuthenticatedUser(AccessToken(token="", client_id=agent.id, scopes=[], subject=agent.id,
                                         claims={"iss": agent.issuer} if agent.issuer else None))


class SessionGuard:
    """Who opened each live session, and whether an agent may open another.

    ``live`` answers whether a session id is still open (the session manager's own table);
    sessions it no longer knows are forgotten here too.
    """

    def __init__(self, *, max_per_agent: int, starts_per_minute: float, clock: Clock,
                 live: Any = None, max_remembered: int = 100_000) -> None:
        self.max_per_agent = max_per_agent
        self._starts = RateLimiter(starts_per_minute / 60.0, max(1, int(starts_per_minute)), clock)
        self._live = live
        self._owners: OrderedDict[str, str] = OrderedDict()
        self._max_remembered = max_remembered

    def _prune(self) -> None:
        if self._live is not None:
            for sid in [s for s in self._owners if not self._live(s)]:
                del self._owners[sid]
        while len(self._owners) > self._max_remembered:
            self._owners.popitem(last=False)

    def owner(self, session_id: str) -> str | None:
        return self._owners.get(session_id)

    def open_sessions(self, agent: str) -> int:
        self._prune()
        return sum(1 for owner in self._owners.values() if owner == agent)

    def admit(self, agent: str) -> tuple[ReasonCode, str] | None:
        """None when ``agent`` may open a session now, else why not (its cap or its rate)."""
        if self.open_sessions(agent) >= self.max_per_agent:
            return ReasonCode.SESSION_LIMIT, f"{self.max_per_agent} sessions open"
        if not self._starts.allow(agent):
            return ReasonCode.SESSION_LIMIT, "sessions opened too fast"
        return None

    def by_agent(self, top: int) -> dict[str, int]:
        """Open sessions of the ``top`` agents holding the most, the rest summed as ``other``
        (so that a metric labelled by agent has at most ``top + 1`` series)."""
        self._prune()
        counts = Counter(self._owners.values()).most_common()
        out = dict(counts[:top])
        if rest := sum(n for _, n in counts[top:]):
            out[OTHER_AGENTS] = out.get(OTHER_AGENTS, 0) + rest
        return out

    def opened(self, session_id: str, agent: str) -> None:
        self._owners[session_id] = agent


class SessionEvents(EventStore):
    """The SSE events of one MCP session, so that its client can resume a stream
    (``Last-Event-ID``) after a dropped connection.

    One store per session (see :class:`SessionManager`): the SDK's stream ids repeat across
    sessions (the standalone stream is ``_GET_stream`` in every session, request streams are
    JSON-RPC ids), so a store shared by sessions would replay one agent's events to another.
    Event ids are random; the last ``max_events`` events are kept, older ones are forgotten
    (a resume after them replays nothing).
    """

    def __init__(self, max_events: int = 256) -> None:
        self.max_events = max_events
        self._events: OrderedDict[str, tuple[str, Any]] = OrderedDict()  # event id -> (stream id, message)

    async def store_event(self, stream_id: str, message: Any) -> str:
        event_id = secrets.token_urlsafe(12)
        self._events[event_id] = (stream_id, message)
        while len(self._events) > self.max_events:
            self._events.popitem(last=False)
        return event_id

    async def replay_events_after(self, last_event_id: str, send_callback: Any) -> str | None:
        if last_event_id not in self._events:
            return None
        stream_id = self._events[last_event_id][0]
        after = False
        for event_id, (stream, message) in list(self._events.items()):
            if after and stream == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))
            after = after or event_id == last_event_id
        return stream_id


class SessionManager(StreamableHTTPSessionManager):
    """The SDK's session manager, giving each new session its own :class:`SessionEvents`.

    The manager reads ``event_store`` once per session it admits, to build its transport;
    here each read is a fresh store (``None``, no resumability, when stateless).
    """

    def __init__(self, *args: Any, max_events: int | None = 256, **kwargs: Any) -> None:
        self._max_events = max_events
        super().__init__(*args, **kwargs)

    @property  # type: ignore[override]
    def event_store(self) -> EventStore | None:
        return SessionEvents(self._max_events) if self._max_events and not self.stateless else None

    @event_store.setter
    def event_store(self, value: EventStore | None) -> None:
        if value is not None:
            raise ValueError("SessionManager makes one event store per session; pass max_events instead")
