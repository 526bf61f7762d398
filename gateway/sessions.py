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

from collections import OrderedDict
from typing import Any

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken

from .clock import Clock
from .errors import ReasonCode
from .identity import AgentIdentity
from .ratelimit import RateLimiter

__all__ = ["SessionGuard", "authenticated_user"]


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

    def opened(self, session_id: str, agent: str) -> None:
        self._owners[session_id] = agent
