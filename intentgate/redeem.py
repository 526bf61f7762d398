"""Redeeming action tokens at the gateway: the shared ledger for tool servers.

A token the gateway forwards itself is burnt by the front before the call leaves.  A token
handed out by ``POST /v1/decide`` goes to an enforcement point that calls the tool itself;
the tool server then redeems it here (``POST /v1/tokens/redeem``) instead of keeping a
ledger of its own.  Redemption verifies the token for exactly the call the tool server
received (audience, tool, arguments digest, times, signature) and burns its ``jti`` with one
conditional UPDATE in the gateway's database, so a token is honoured once however many
gateway replicas and tool-server replicas race for it.

Before the token is looked at, :class:`RedeemDoor` decides whether the caller may redeem at
all: its own workload token (``Authorization: Bearer``, verified as agents' are; required with
``redeem.require_caller``) must be listed in ``redeem.callers`` for the token's audience, and
each caller (its identity, else its address) is held to ``redeem.rate_limit_per_second``.
Callers turned away there are counted (``intentgate_redeem_turned_away_total{reason}``) and
summed up in at most one log line per ``redeem.log_every_seconds``, never recorded one by one:
the decision log is sealed into its Merkle tree and kept forever, and anyone who can reach
the port must not be able to grow it at will.

Every refusal of a caller let in is recorded in the decision log (kind ``token/redeem``,
outcome ``deny``, the specific reason code); a successful redemption shows as the token's
``consumed`` status.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .clock import Clock
from .config import RedeemConfig
from .decide import Decider, new_id
from .errors import GatewayError, ReasonCode, TokenError, reason
from .identity import AgentIdentity, IdentityError
from .metrics import Metrics
from .names import glob_match
from .ratelimit import RateLimiter
from .store import DecisionRecord, Store
from .verify import ActionClaims, ActionTokenVerifier, ConsumeOutcome

__all__ = ["RedeemDoor", "Redeemed", "Redemption", "TurnedAway", "redeem"]

log = logging.getLogger("intentgate.redeem")

KIND = "token/redeem"
_UNVERIFIED = "unverified"  # the agent of a token whose signature or binding did not check out

_REFUSED = {
    ConsumeOutcome.REPLAYED: (ReasonCode.TOKEN_REPLAYED, "the token was already used"),
    ConsumeOutcome.REVOKED: (ReasonCode.TOKEN_REVOKED, "the token was revoked (its task ended or expired)"),
    ConsumeOutcome.UNKNOWN: (ReasonCode.INVALID_TOKEN, "the token was not issued by this gateway's store"),
}


@dataclass(frozen=True)
class TurnedAway:
    """A caller refused at the door, before its token was looked at: counted, not recorded."""

    code: ReasonCode
    message: str
    status: int
    retry_after: int | None = None


class RedeemDoor:
    """Who may redeem tokens of which audience, and how often: checked before any token is."""

    def __init__(self, config: RedeemConfig, verify: Callable[[str | None], AgentIdentity], *, clock: Clock,
                 metrics: Metrics | None = None) -> None:
        self.config = config
        self.clock = clock
        self.metrics = metrics
        self._verify = verify
        self._limiter = (RateLimiter(config.rate_limit_per_second, config.rate_limit_burst, clock)
                         if config.rate_limit_per_second else None)
        self._unlogged: Counter[str] = Counter()
        self._logged_at = -math.inf

    def admit(self, bearer: str | None, address: str, audience: str) -> AgentIdentity | None | TurnedAway:
        """The caller (``None``: anonymous, where that is allowed), or why it is turned away."""
        caller: AgentIdentity | None = None
        if bearer is not None:
            try:
                caller = self._verify(bearer)
            except IdentityError:
                pass  # refused below, after the address's rate: a flood of bad credentials is throttled too
        who = f"caller {caller.id}" if caller is not None else f"address {address}"
        if self._limiter is not None and not self._limiter.allow(who):
            wait = max(1, math.ceil(self._limiter.wait(who)))
            return self._turn(TurnedAway(ReasonCode.RATE_LIMITED, f"too many redemptions: retry in {wait} s", 429,
                                         retry_after=wait), who)
        if caller is None and (bearer is not None or self.config.require_caller):
            # a credential that does not verify is refused even where none is required: it was meant to count
            return self._turn(TurnedAway(ReasonCode.UNAUTHENTICATED, "a valid workload token is required", 401), who)
        if caller is not None and not self.permits(caller.id, audience):
            return self._turn(TurnedAway(ReasonCode.REDEEMER_NOT_PERMITTED,
                                         f"this caller may not redeem tokens for {audience[:64]!r}", 403), who)
        return caller

    def permits(self, caller: str, audience: str) -> bool:
        """True when ``redeem.callers`` lets ``caller`` redeem the tokens of ``audience``."""
        return any(any(glob_match(s, caller) for s in c.subjects) and any(glob_match(a, audience) for a in c.audiences)
                   for c in self.config.callers)

    def _turn(self, refusal: TurnedAway, who: str) -> TurnedAway:
        """Count the refusal; say so in the log at most once per ``log_every_seconds``."""
        if self.metrics is not None:
            self.metrics.redeem_refused(refusal.code)
        self._unlogged[refusal.code.value] += 1
        now = self.clock.now()
        if now - self._logged_at >= self.config.log_every_seconds:
            counts = dict(sorted(self._unlogged.items()))
            log.warning("token redemptions turned away (counted, not in the decision log): %s; the latest from %s",
                        ", ".join(f"{n} {code}" for code, n in counts.items()), who[:200],
                        extra={"turned_away": counts, "latest": who[:200]})
            self._unlogged.clear()
            self._logged_at = now
        return refusal


@dataclass(frozen=True)
class Redeemed:
    claims: ActionClaims


@dataclass(frozen=True)
class Redemption:
    """A refused redemption: the reason code, a message, and the decision that records it."""

    code: ReasonCode
    message: str
    decision_id: str


async def redeem(
    *,
    verifier: ActionTokenVerifier,
    store: Store,
    decider: Decider,
    token: str,
    audience: str,
    tool: str,
    arguments: dict[str, Any],
) -> Redeemed | Redemption:
    """Verify ``token`` for this call and burn it; a refusal is recorded and returned."""
    claims: ActionClaims | None = None
    try:
        claims = verifier.verify(token, tool=tool, arguments=arguments, audience=audience)
    except TokenError as exc:
        return await _record_refusal(decider, _refusal(decider, None, audience, tool), exc.code, exc.message)
    refused: list[DecisionRecord] = []

    def record(outcome: ConsumeOutcome) -> DecisionRecord:
        # built inside the burning transaction, appended with it: one commit per refusal
        code, _ = _REFUSED[outcome]
        refused[:] = [_refusal(decider, claims, audience, tool)]
        refused[0].reasons = [reason(code, claims.jti)]
        return refused[0]

    try:
        outcome = await store.consume(claims.jti, expires_at=float(claims.exp), now=verifier.clock.now(),
                                      on_refused=record)
    except GatewayError as exc:  # the store is down: nothing was burnt, nothing is honoured
        return await _record_refusal(decider, _refusal(decider, claims, audience, tool), exc.code, exc.message)
    if outcome is ConsumeOutcome.CONSUMED:
        return Redeemed(claims)
    code, message = _REFUSED[outcome]
    log.info("token redemption refused", extra={"decision_id": refused[0].id, "code": code.value})
    return Redemption(code, f"{message} ({claims.jti})", refused[0].id)


def _refusal(decider: Decider, claims: ActionClaims | None, audience: str, tool: str) -> DecisionRecord:
    """The decision recording a refused redemption (reasons are filled in by the caller)."""
    detail = claims.detail if claims is not None else None
    return DecisionRecord(
        id=new_id("dec"),
        at=decider.clock.now(),
        kind=KIND,
        agent=claims.sub[:512] if claims is not None else _UNVERIFIED,
        intent=detail.intent[:64] if detail else None,
        task_id=detail.task[:64] if detail else None,
        step=detail.step[:64] if detail else None,
        upstream=audience[:64],
        tool=tool[:256],
        outcome="deny",
        reasons=[],
        masked=["/arguments"],  # a tool server's copy of the arguments: the allow already holds them
    )


async def _record_refusal(decider: Decider, record: DecisionRecord, code: ReasonCode, message: str) -> Redemption:
    """Record a refusal decided outside the burning transaction (bad token, store down)."""
    verdict = await decider.record_failure(record, code)
    log.info("token redemption refused", extra={"decision_id": verdict.decision_id, "code": code.value})
    return Redemption(code, message, verdict.decision_id)
