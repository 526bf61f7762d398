"""Minting action tokens: shape, lifetime, uniqueness; read back by plain pyjwt from the JWKS."""

from __future__ import annotations

import base64
import re

import jwt
import pytest

from intentgate.canonical import arguments_sha256
from intentgate.clock import FrozenClock
from intentgate.errors import ReasonCode, TokenError
from intentgate.keys import KeySet
from intentgate.tokens import ActionTokenIssuer, MintedToken
from tests.conftest import NOW

AGENT = "spiffe://example.org/agent/support-1"
ARGS = {"order_id": "ORD-7", "amount": 30, "currency": "EUR"}


def mint(issuer: ActionTokenIssuer, *, task_expires_at: float = NOW + 900, ttl: int | None = None,
         upstream: str = "payments", tool: str = "payments.refund") -> MintedToken:
    return issuer.mint(
        agent=AGENT, task_id="tsk_1", intent="refund-order", step="refund", upstream=upstream, tool=tool,
        arguments_sha256=arguments_sha256(ARGS), task_expires_at=task_expires_at, ttl_seconds=ttl,
    )


def decode_with_jwks(token: str, keyset: KeySet) -> dict:
    """Read a token the way any RFC-following verifier would: pyjwt, the published JWK, no clock checks."""
    jwk = next(k for k in keyset.jwks()["keys"] if k["kid"] == jwt.get_unverified_header(token)["kid"])
    return jwt.decode(token, jwt.PyJWK(jwk).key, algorithms=["EdDSA"], audience="payments", issuer="intentgate",
                      options={"verify_exp": False, "verify_iat": False, "verify_nbf": False})


def test_header(issuer: ActionTokenIssuer, keyset: KeySet) -> None:
    assert jwt.get_unverified_header(mint(issuer).token) == {"alg": "EdDSA", "typ": "at+jwt", "kid": keyset.current.kid}


def test_claims(issuer: ActionTokenIssuer, keyset: KeySet) -> None:
    minted = mint(issuer)
    claims = decode_with_jwks(minted.token, keyset)
    assert claims == minted.claims
    assert claims == {
        "iss": "intentgate", "sub": AGENT, "client_id": AGENT, "aud": "payments",
        "iat": int(NOW), "nbf": int(NOW), "exp": int(NOW) + 30, "jti": minted.jti,
        "authorization_details": [{
            "type": "mcp_tool_call", "tool": "payments.refund", "arguments_sha256": arguments_sha256(ARGS),
            "task": "tsk_1", "intent": "refund-order", "step": "refund",
        }],
    }
    assert (minted.issued_at, minted.expires_at) == (int(NOW), int(NOW) + 30)


def test_issuer_name_is_configurable(keyset: KeySet, clock: FrozenClock) -> None:
    token = ActionTokenIssuer(keyset, issuer="gw-eu-1", clock=clock).mint(
        agent=AGENT, task_id="t", intent="i", step="s", upstream="payments", tool="payments.refund",
        arguments_sha256=arguments_sha256({}), task_expires_at=NOW + 60,
    ).token
    assert jwt.decode(token, options={"verify_signature": False})["iss"] == "gw-eu-1"


def test_ttl_defaults_to_30_seconds(issuer: ActionTokenIssuer) -> None:
    minted = mint(issuer)
    assert minted.expires_at - minted.issued_at == 30


def test_policy_ttl_overrides_default(issuer: ActionTokenIssuer) -> None:
    minted = mint(issuer, ttl=15)
    assert minted.expires_at - minted.issued_at == 15


def test_exp_is_capped_at_task_expiry(issuer: ActionTokenIssuer) -> None:
    minted = mint(issuer, task_expires_at=NOW + 10.7)
    assert minted.expires_at == int(NOW) + 10  # never a fraction beyond the task
    assert mint(issuer, task_expires_at=NOW + 10, ttl=600).expires_at == int(NOW) + 10


@pytest.mark.parametrize("task_expires_at", [NOW - 1, NOW, NOW + 0.5])
def test_no_token_for_a_task_without_time_left(issuer: ActionTokenIssuer, task_expires_at: float) -> None:
    with pytest.raises(TokenError) as exc:
        mint(issuer, task_expires_at=task_expires_at)
    assert exc.value.code is ReasonCode.TASK_EXPIRED


def test_ttl_must_be_positive(issuer: ActionTokenIssuer, keyset: KeySet) -> None:
    with pytest.raises(ValueError, match="ttl"):
        mint(issuer, ttl=0)
    with pytest.raises(ValueError, match="default_ttl"):
        ActionTokenIssuer(keyset, default_ttl=0)


@pytest.mark.parametrize(("upstream", "tool"), [("payments", "orders.get"), ("payments", "refund"),
                                                ("pay", "payments.refund"), ("payments", "payments.")])
def test_tool_must_belong_to_the_audience(issuer: ActionTokenIssuer, upstream: str, tool: str) -> None:
    with pytest.raises(ValueError, match="not a tool of upstream"):
        mint(issuer, upstream=upstream, tool=tool)


def test_jti_is_unique_and_has_at_least_128_random_bits(issuer: ActionTokenIssuer) -> None:
    jtis = [mint(issuer).jti for _ in range(500)]
    assert len(set(jtis)) == len(jtis)
    for jti in jtis:
        assert re.fullmatch(r"[A-Za-z0-9_-]+", jti)
        assert len(base64.urlsafe_b64decode(jti + "=" * (-len(jti) % 4))) * 8 >= 128


def test_same_call_twice_gives_two_different_tokens(issuer: ActionTokenIssuer) -> None:
    assert mint(issuer).token != mint(issuer).token


def test_signs_with_the_current_key_after_rotation(issuer: ActionTokenIssuer, keyset: KeySet) -> None:
    before = mint(issuer).token
    new = keyset.rotate()
    after = mint(issuer).token
    assert jwt.get_unverified_header(after)["kid"] == new.kid != jwt.get_unverified_header(before)["kid"]
    assert decode_with_jwks(after, keyset)["aud"] == "payments"
    assert decode_with_jwks(before, keyset)["aud"] == "payments"  # previous key still published


def test_non_ascii_values_round_trip(issuer: ActionTokenIssuer, keyset: KeySet) -> None:
    minted = issuer.mint(
        agent="agent-é✓", task_id="tsk_é", intent="refund-order", step="refund", upstream="payments",
        tool="payments.refund", arguments_sha256=arguments_sha256(ARGS), task_expires_at=NOW + 60,
    )
    assert minted.token.isascii()
    assert decode_with_jwks(minted.token, keyset)["sub"] == "agent-é✓"


def test_token_secret_stays_out_of_repr(issuer: ActionTokenIssuer) -> None:
    minted = mint(issuer)
    assert minted.jti in repr(minted)
    assert minted.token not in repr(minted) and minted.token not in str(minted) and minted.token not in f"{minted}"
