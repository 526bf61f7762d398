"""Action-token security: every way a token can be wrong is refused with its own code.

Real Ed25519 keys on disk, real signatures; hand-built tokens for the attacks pyjwt itself
refuses to produce (``alg: none``, HS256 keyed with the public key).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import random
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.canonical import arguments_sha256
from gateway.clock import FrozenClock
from gateway.errors import ReasonCode, TokenError
from gateway.keys import KeySet, PublicKeySet
from gateway.tokens import ActionTokenIssuer, MintedToken
from gateway.verify import ActionTokenVerifier, ConsumeOutcome, SqliteJtiLedger

NOW = 1_800_000_000.0
ARGS = {"order_id": "ORD-7", "amount": 30, "currency": "EUR"}
TOOL = "payments.refund"


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(NOW)


@pytest.fixture
def keyset(tmp_path: Path, clock: FrozenClock) -> KeySet:
    return KeySet.open_or_create(tmp_path / "keys", clock=clock)


@pytest.fixture
def issuer(keyset: KeySet, clock: FrozenClock) -> ActionTokenIssuer:
    return ActionTokenIssuer(keyset, clock=clock)


@pytest.fixture
def verifier(keyset: KeySet, clock: FrozenClock) -> ActionTokenVerifier:
    # the tool server's view: public keys only, from the published JWKS
    return ActionTokenVerifier(PublicKeySet.from_jwks(keyset.jwks()), clock=clock, leeway=5)


@pytest.fixture
def ledger(tmp_path: Path):
    led = SqliteJtiLedger(tmp_path / "jti.db")
    yield led
    led.close()


def mint(issuer: ActionTokenIssuer, *, args: dict = ARGS, tool: str = TOOL, task_expires_at: float = NOW + 900,
         ttl: int | None = None) -> MintedToken:
    return issuer.mint(
        agent="spiffe://example.org/agent/support-1", task_id="tsk_1", intent="refund-order", step="refund",
        upstream=tool.split(".")[0], tool=tool, arguments_sha256=arguments_sha256(args),
        task_expires_at=task_expires_at, ttl_seconds=ttl,
    )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def code_of(verifier: ActionTokenVerifier, token: str, **kw) -> ReasonCode:
    params = {"tool": TOOL, "arguments": ARGS, "audience": "payments", **kw}
    with pytest.raises(TokenError) as exc:
        verifier.verify(token, **params)
    return exc.value.code


def test_good_token_verifies(issuer, verifier) -> None:
    claims = verifier.verify(mint(issuer).token, tool=TOOL, arguments=ARGS, audience="payments")
    assert claims.sub == "spiffe://example.org/agent/support-1"
    assert claims.detail.step == "refund" and claims.detail.task == "tsk_1"
    assert claims.exp - claims.iat == 30


def test_header_and_claims_shape(issuer, keyset) -> None:
    token = mint(issuer).token
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "EdDSA", "typ": "at+jwt", "kid": keyset.current.kid}
    claims = jwt.decode(token, options={"verify_signature": False})
    assert set(claims) == {"iss", "sub", "client_id", "aud", "iat", "nbf", "exp", "jti", "authorization_details"}
    assert claims["authorization_details"] == [
        {"type": "mcp_tool_call", "tool": TOOL, "arguments_sha256": arguments_sha256(ARGS), "task": "tsk_1",
         "intent": "refund-order", "step": "refund"}
    ]


def test_wrong_key_same_kid(issuer, verifier, keyset) -> None:
    claims = jwt.decode(mint(issuer).token, options={"verify_signature": False})
    forged = jwt.encode(claims, Ed25519PrivateKey.generate(), algorithm="EdDSA",
                        headers={"kid": keyset.current.kid, "typ": "at+jwt"})
    assert code_of(verifier, forged) is ReasonCode.INVALID_TOKEN


def test_unknown_kid(issuer, verifier) -> None:
    claims = jwt.decode(mint(issuer).token, options={"verify_signature": False})
    forged = jwt.encode(claims, Ed25519PrivateKey.generate(), algorithm="EdDSA",
                        headers={"kid": "attacker-key", "typ": "at+jwt"})
    assert code_of(verifier, forged) is ReasonCode.INVALID_TOKEN


def test_alg_none(issuer, verifier, keyset) -> None:
    claims = jwt.decode(mint(issuer).token, options={"verify_signature": False})
    header = {"alg": "none", "typ": "at+jwt", "kid": keyset.current.kid}
    token = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}."
    assert code_of(verifier, token) is ReasonCode.INVALID_TOKEN


def test_hs256_with_public_key_as_secret(issuer, verifier, keyset) -> None:
    claims = jwt.decode(mint(issuer).token, options={"verify_signature": False})
    header = {"alg": "HS256", "typ": "at+jwt", "kid": keyset.current.kid}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    for secret in (
        keyset.current.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
        keyset.current.public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    ):
        sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        assert code_of(verifier, f"{signing_input}.{b64(sig)}") is ReasonCode.INVALID_TOKEN


def test_expired(issuer, verifier, clock) -> None:
    token = mint(issuer).token
    clock.advance(30 + 5)
    assert code_of(verifier, token) is ReasonCode.TOKEN_EXPIRED


def test_expiry_leeway_accepted(issuer, verifier, clock) -> None:
    token = mint(issuer).token
    clock.advance(30 + 4)
    assert verifier.verify(token, tool=TOOL, arguments=ARGS, audience="payments")


def test_not_yet_valid(keyset, verifier, clock) -> None:
    future = ActionTokenIssuer(keyset, clock=FrozenClock(NOW + 60))
    assert code_of(verifier, mint(future).token) is ReasonCode.TOKEN_NOT_YET_VALID
    slightly = ActionTokenIssuer(keyset, clock=FrozenClock(NOW + 4))  # within leeway
    assert verifier.verify(mint(slightly).token, tool=TOOL, arguments=ARGS, audience="payments")


def test_wrong_audience(issuer, verifier) -> None:
    assert code_of(verifier, mint(issuer).token, audience="orders") is ReasonCode.TOKEN_AUDIENCE


def test_wrong_issuer(keyset, verifier, clock) -> None:
    other = ActionTokenIssuer(keyset, issuer="someone-else", clock=clock)
    assert code_of(verifier, mint(other).token) is ReasonCode.INVALID_TOKEN


def test_tampered_arguments(issuer, verifier) -> None:
    token = mint(issuer).token
    assert code_of(verifier, token, arguments={**ARGS, "amount": 3000}) is ReasonCode.TOKEN_ARGUMENTS
    assert code_of(verifier, token, arguments={**ARGS, "extra": True}) is ReasonCode.TOKEN_ARGUMENTS
    assert code_of(verifier, token, arguments={**ARGS, "amount": "30"}) is ReasonCode.TOKEN_ARGUMENTS


def test_reordered_arguments_and_number_spelling_still_verify(issuer, verifier) -> None:
    token = mint(issuer).token
    reordered = json.loads('{"currency": "EUR", "amount": 30.0, "order_id": "ORD-7"}')
    assert verifier.verify(token, tool=TOOL, arguments=reordered, audience="payments")


def test_token_for_another_tool(issuer, verifier) -> None:
    token = mint(issuer, tool="payments.charge").token
    assert code_of(verifier, token, audience="payments") is ReasonCode.TOKEN_TOOL


def test_tampered_payload_keeps_old_signature(issuer, verifier) -> None:
    header, payload, sig = mint(issuer).token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["authorization_details"][0]["arguments_sha256"] = arguments_sha256({**ARGS, "amount": 3000})
    forged = f"{header}.{b64(json.dumps(claims).encode())}.{sig}"
    assert code_of(verifier, forged, arguments={**ARGS, "amount": 3000}) is ReasonCode.INVALID_TOKEN


async def test_replay_is_refused(issuer, verifier, ledger) -> None:
    token = mint(issuer).token
    await verifier.verify_and_consume(token, tool=TOOL, arguments=ARGS, audience="payments", ledger=ledger)
    with pytest.raises(TokenError) as exc:
        await verifier.verify_and_consume(token, tool=TOOL, arguments=ARGS, audience="payments", ledger=ledger)
    assert exc.value.code is ReasonCode.TOKEN_REPLAYED


async def test_concurrent_redeemers_exactly_one_wins(issuer, verifier, ledger) -> None:
    token = mint(issuer).token

    async def redeem() -> bool:
        try:
            await verifier.verify_and_consume(token, tool=TOOL, arguments=ARGS, audience="payments", ledger=ledger)
            return True
        except TokenError as exc:
            assert exc.code is ReasonCode.TOKEN_REPLAYED
            return False

    results = await asyncio.gather(*(redeem() for _ in range(32)))
    assert results.count(True) == 1


class RevokingLedger:
    """Stands in for the gateway store's ledger answer for a revoked task's token.

    The store's real revocation (end_task → REVOKED) is tested in test_store.py and
    test_decide.py; this checks only how the verifier maps that answer.
    """

    async def consume(self, jti: str, *, expires_at: float, now: float) -> ConsumeOutcome:
        return ConsumeOutcome.REVOKED


async def test_revoked_token(issuer, verifier) -> None:
    with pytest.raises(TokenError) as exc:
        await verifier.verify_and_consume(
            mint(issuer).token, tool=TOOL, arguments=ARGS, audience="payments", ledger=RevokingLedger()
        )
    assert exc.value.code is ReasonCode.TOKEN_REVOKED


def test_exp_capped_at_task_expiry(issuer) -> None:
    minted = mint(issuer, task_expires_at=NOW + 10)
    assert minted.expires_at == int(NOW) + 10
    with pytest.raises(TokenError):
        mint(issuer, task_expires_at=NOW - 1)


def test_policy_ttl_overrides_default(issuer) -> None:
    assert mint(issuer, ttl=15).expires_at - mint(issuer, ttl=15).issued_at == 15


def test_token_secret_stays_out_of_repr(issuer) -> None:
    minted = mint(issuer)
    assert minted.token not in repr(minted) and minted.token not in str(minted)


def test_rotation_previous_key_verifies_until_next_rotation(keyset, issuer, clock) -> None:
    token = mint(issuer).token
    keyset.rotate()
    v1 = ActionTokenVerifier(PublicKeySet.from_jwks(keyset.jwks()), clock=clock)
    assert v1.verify(token, tool=TOOL, arguments=ARGS, audience="payments")
    keyset.rotate()
    v2 = ActionTokenVerifier(PublicKeySet.from_jwks(keyset.jwks()), clock=clock)
    with pytest.raises(TokenError) as exc:
        v2.verify(token, tool=TOOL, arguments=ARGS, audience="payments")
    assert exc.value.code is ReasonCode.INVALID_TOKEN


def test_jwks_publishes_current_and_previous_only_and_no_private_material(keyset) -> None:
    first = keyset.current.kid
    keyset.rotate()
    second = keyset.current.kid
    keyset.rotate()
    jwks = keyset.jwks()
    assert [k["kid"] for k in jwks["keys"]] == [keyset.current.kid, second]
    assert first not in json.dumps(jwks)
    assert all("d" not in k and k["kty"] == "OKP" and k["alg"] == "EdDSA" for k in jwks["keys"])
    assert len(list(keyset.directory.glob("*.pem"))) == 2


def test_key_files_are_private(keyset) -> None:
    assert all((p.stat().st_mode & 0o777) == 0o600 for p in keyset.directory.glob("*.pem"))


def test_corrupt_key_file_is_a_clear_error(tmp_path: Path) -> None:
    d = tmp_path / "keys"
    d.mkdir()
    (d / "0000000000001-bad.pem").write_text("not a key")
    from gateway.errors import ConfigError

    with pytest.raises(ConfigError, match="0000000000001-bad.pem"):
        KeySet(d)


def test_jwks_with_private_material_is_refused(keyset) -> None:
    from gateway.errors import ConfigError

    jwks = keyset.jwks()
    jwks["keys"][0]["d"] = "secret"
    with pytest.raises(ConfigError, match="private"):
        PublicKeySet.from_jwks(jwks)


def test_garbage_never_escapes_as_another_exception(issuer, verifier) -> None:
    rng = random.Random(1234)
    good = mint(issuer).token
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ \x00é"
    samples: list[object] = ["", ".", "..", "a.b.c", "e30.e30.", None, 17, b"bytes", "x" * 20000]
    for _ in range(300):
        samples.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 200))))
    for _ in range(300):  # mutate one character of a valid token
        i = rng.randrange(len(good))
        samples.append(good[:i] + rng.choice(alphabet) + good[i + 1 :])
    for _ in range(100):  # truncations
        samples.append(good[: rng.randrange(len(good))])
    accepted = 0
    for sample in samples:
        try:
            verifier.verify(sample, tool=TOOL, arguments=ARGS, audience="payments")  # type: ignore[arg-type]
            accepted += 1
        except TokenError as exc:
            assert isinstance(exc.code, ReasonCode)
    # a mutation may land in base64 padding bits and still decode to the same token; nothing else passes
    assert accepted <= 5
