"""Redeeming action tokens at the gateway: the shared ledger for tool servers.

A token the gateway forwards itself is burnt by the front before the call leaves.  A token
handed out by ``POST /v1/decide`` goes to an enforcement point that calls the tool itself;
the tool server then redeems it here (``POST /v1/tokens/redeem``) instead of keeping a
ledger of its own.  Redemption verifies the token for exactly the call the tool server
received (audience, tool, arguments digest, times, signature) and burns its ``jti`` with one
conditional UPDATE in the gateway's database, so a token is honoured once however many
gateway replicas and tool-server replicas race for it.

Every refusal is recorded in the decision log (kind ``token/redeem``, outcome ``deny``, the
specific reason code); a successful redemption shows as the token's ``consumed`` status.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from .decide import Decider, new_id
from .errors import GatewayError, ReasonCode, TokenError, reason
from .store import DecisionRecord, Store
from .verify import ActionClaims, ActionTokenVerifier, ConsumeOutcome

__all__ = ["Redeemed", "Redemption", "redeem"]

log = logging.getLogger("intentgate.redeem")

KIND = "token/redeem"
_UNVERIFIED = "unverified"  # the agent of a token whose signature or binding did not check out

_REFUSED = {
    ConsumeOutcome.REPLAYED: (ReasonCode.TOKEN_REPLAYED, "the token was already used"),
    ConsumeOutcome.REVOKED: (ReasonCode.TOKEN_REVOKED, "the token was revoked (its task ended or expired)"),
    ConsumeOutcome.UNKNOWN: (ReasonCode.INVALID_TOKEN, "the token was not issued by this gateway's store"),
}


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
