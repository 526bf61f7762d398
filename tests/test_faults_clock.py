"""Clock skew: leeway from the configuration absorbs small skew, and nothing more.

A tool server verifying action tokens (``intentgate.verify``) runs on its own clock, which may
be behind the gateway's (the token looks issued in the future) or ahead (it looks expired);
agents' workload tokens come from issuers on other clocks too.  Within
``tokens.leeway_seconds`` / ``identity.leeway_seconds`` the token is accepted; beyond it,
refused with the specific reason, and a refused action token is not burnt.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from intentgate.clock import FrozenClock
from intentgate.config import load_config
from intentgate.errors import ReasonCode, TokenError
from intentgate.identity import DevIssuer, IdentityError
from intentgate.keys import KeySet, PublicKeySet
from intentgate.runtime import Runtime
from intentgate.verify import ActionTokenVerifier, SqliteJtiLedger
from tests.conftest import INTENTS_DIR, POLICY_DIR
from tests.test_decide import MONDAY_10, begin_refund, call

TOKEN_LEEWAY = 5.0
IDENTITY_LEEWAY = 10.0
TTL = 30  # the action token's lifetime (tokens.ttl_seconds default)
ARGS = {"ticket_id": "TCK-1"}


@pytest.fixture
async def rt(tmp_path: Path) -> AsyncIterator[Runtime]:
    config = load_config(
        None, data_dir=tmp_path, intents_dir=INTENTS_DIR, policy_dir=POLICY_DIR,
        tokens={"leeway_seconds": TOKEN_LEEWAY}, identity={"leeway_seconds": IDENTITY_LEEWAY},
    )
    runtime = await Runtime.open(config, clock=FrozenClock(MONDAY_10))
    yield runtime
    await runtime.aclose()


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[SqliteJtiLedger]:
    jti_ledger = SqliteJtiLedger(tmp_path / "tool-jti.db")
    yield jti_ledger
    jti_ledger.close()


async def allowed_token(rt: Runtime) -> str:
    task_id = await begin_refund(rt)
    v = await rt.decider.decide(call(task_id, "read_ticket", "tickets.get_ticket", ARGS))
    assert v.outcome == "allow" and v.token is not None
    assert v.token.issued_at == int(MONDAY_10) and v.token.expires_at == int(MONDAY_10) + TTL
    return v.token.token


def tool_verifier(rt: Runtime, skew: float) -> ActionTokenVerifier:
    """The tool server's verifier: the gateway's public keys, its own clock, the configured leeway."""
    return ActionTokenVerifier(PublicKeySet.from_jwks(rt.keys.jwks()), clock=FrozenClock(MONDAY_10 + skew),
                               leeway=rt.config.tokens.leeway_seconds)


@pytest.mark.parametrize(
    ("skew", "refusal"),
    [
        (-(TOKEN_LEEWAY - 1), None),  # tool clock behind: iat/nbf slightly in its future
        (-(TOKEN_LEEWAY + 1), ReasonCode.TOKEN_NOT_YET_VALID),
        (TTL + TOKEN_LEEWAY - 1, None),  # tool clock ahead: exp slightly in its past
        (TTL + TOKEN_LEEWAY, ReasonCode.TOKEN_EXPIRED),
        (TTL + TOKEN_LEEWAY + 60, ReasonCode.TOKEN_EXPIRED),
    ],
)
async def test_action_token_clock_skew(rt: Runtime, ledger: SqliteJtiLedger, skew: float,
                                       refusal: ReasonCode | None) -> None:
    token = await allowed_token(rt)
    verifier = tool_verifier(rt, skew)
    if refusal is None:
        claims = await verifier.verify_and_consume(token, tool="tickets.get_ticket", arguments=ARGS,
                                                   audience="tickets", ledger=ledger)
        assert claims.detail.tool == "tickets.get_ticket"
        with pytest.raises(TokenError) as replay:  # still single use
            await verifier.verify_and_consume(token, tool="tickets.get_ticket", arguments=ARGS,
                                              audience="tickets", ledger=ledger)
        assert replay.value.code is ReasonCode.TOKEN_REPLAYED
        return
    with pytest.raises(TokenError) as exc:
        await verifier.verify_and_consume(token, tool="tickets.get_ticket", arguments=ARGS,
                                          audience="tickets", ledger=ledger)
    assert exc.value.code is refusal
    # the refusal burnt nothing: the same token is good on a clock in sync
    await tool_verifier(rt, 0).verify_and_consume(token, tool="tickets.get_ticket", arguments=ARGS,
                                                  audience="tickets", ledger=ledger)


@pytest.mark.parametrize(
    ("issuer_ahead", "gateway_later", "accepted"),
    [
        (IDENTITY_LEEWAY - 1, 0, True),  # the agent's issuer runs ahead: iat/nbf in the gateway's future
        (IDENTITY_LEEWAY + 1, 0, False),
        (0, 60 + IDENTITY_LEEWAY - 1, True),  # the gateway's clock is past the token's exp
        (0, 60 + IDENTITY_LEEWAY + 1, False),
    ],
)
async def test_workload_identity_clock_skew(rt: Runtime, issuer_ahead: float, gateway_later: float,
                                            accepted: bool) -> None:
    verifier = rt.identity_verifier()
    assert verifier.leeway == IDENTITY_LEEWAY
    keys = KeySet.open_or_create(rt.config.agent_issuer_keys_dir)
    issuer = DevIssuer(keys, clock=FrozenClock(MONDAY_10 + issuer_ahead))
    token = issuer.mint("spiffe://example.org/agent/support-1", ttl_seconds=60)
    verifier.clock = FrozenClock(MONDAY_10 + gateway_later)
    if accepted:
        assert verifier.verify(token).id == "spiffe://example.org/agent/support-1"
    else:
        with pytest.raises(IdentityError) as exc:
            verifier.verify(token)
        assert exc.value.code is ReasonCode.UNAUTHENTICATED
        assert ("not valid yet" if issuer_ahead else "expired") in exc.value.message
