"""Action-token security: every way a token can be wrong is refused with its own code.

Real Ed25519 keys on disk, real signatures; hand-built tokens for the attacks pyjwt itself
refuses to produce (``alg: none``, HS256 keyed with the public key).  The verifier is the
tool server's: public keys only, from the published JWKS.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import random
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from intentgate.canonical import arguments_sha256
from intentgate.clock import FrozenClock
from intentgate.errors import ReasonCode, StoreError, TokenError
from intentgate.keys import KeySet, PublicKeySet
from intentgate.tokens import ActionTokenIssuer, MintedToken
from intentgate.verify import ActionTokenVerifier, ConsumeOutcome, SqliteJtiLedger
from tests.conftest import NOW

ARGS = {"order_id": "ORD-7", "amount": 30, "currency": "EUR"}
TOOL = "payments.refund"
LEEWAY = 5


@pytest.fixture
def verifier(keyset: KeySet, clock: FrozenClock) -> ActionTokenVerifier:
    return ActionTokenVerifier(PublicKeySet.from_jwks(keyset.jwks()), clock=clock, leeway=LEEWAY)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[SqliteJtiLedger]:
    led = SqliteJtiLedger(tmp_path / "jti.db")
    yield led
    led.close()


def mint(issuer: ActionTokenIssuer, *, tool: str = TOOL, task_expires_at: float = NOW + 900) -> MintedToken:
    return issuer.mint(
        agent="spiffe://example.org/agent/support-1", task_id="tsk_1", intent="refund-order", step="refund",
        upstream=tool.split(".")[0], tool=tool, arguments_sha256=arguments_sha256(ARGS),
        task_expires_at=task_expires_at,
    )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unverified_claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def resign(keyset: KeySet, claims: dict[str, Any], **header: Any) -> str:
    """Sign arbitrary claims with the gateway's real current key (a buggy or confused minter).

    Built by hand: pyjwt's encoder refuses some of the malformed claims tried here.
    """
    head = {"alg": "EdDSA", "kid": keyset.current.kid, "typ": "at+jwt", **header}
    signing_input = f"{b64(json.dumps(head).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(keyset.current.private.sign(signing_input.encode()))}"


def code_of(verifier: ActionTokenVerifier, token: str, **kw: Any) -> ReasonCode:
    params = {"tool": TOOL, "arguments": ARGS, "audience": "payments", **kw}
    with pytest.raises(TokenError) as exc:
        verifier.verify(token, **params)
    return exc.value.code


def accepted(verifier: ActionTokenVerifier, token: str, **kw: Any) -> bool:
    params = {"tool": TOOL, "arguments": ARGS, "audience": "payments", **kw}
    return verifier.verify(token, **params).jti == unverified_claims(token)["jti"]


# ----- the good case ----------------------------------------------------------------------


def test_good_token_verifies(issuer, verifier) -> None:
    claims = verifier.verify(mint(issuer).token, tool=TOOL, arguments=ARGS, audience="payments")
    assert claims.sub == "spiffe://example.org/agent/support-1" and claims.aud == "payments"
    assert (claims.detail.tool, claims.detail.task, claims.detail.step) == (TOOL, "tsk_1", "refund")
    assert claims.exp - claims.iat == 30


def test_gateway_key_set_verifies_too(issuer, keyset, clock) -> None:
    assert accepted(ActionTokenVerifier(keyset, clock=clock), mint(issuer).token)


# ----- keys and algorithms ----------------------------------------------------------------


def test_wrong_key_with_the_real_kid(issuer, verifier, keyset) -> None:
    claims = unverified_claims(mint(issuer).token)
    forged = jwt.encode(claims, Ed25519PrivateKey.generate(), algorithm="EdDSA",
                        headers={"kid": keyset.current.kid, "typ": "at+jwt"})
    assert code_of(verifier, forged) is ReasonCode.INVALID_TOKEN


def test_wrong_key_with_an_unknown_kid(issuer, verifier) -> None:
    claims = unverified_claims(mint(issuer).token)
    forged = jwt.encode(claims, Ed25519PrivateKey.generate(), algorithm="EdDSA",
                        headers={"kid": "attacker-key", "typ": "at+jwt"})
    assert code_of(verifier, forged) is ReasonCode.INVALID_TOKEN


def test_missing_kid(issuer, verifier) -> None:
    claims = unverified_claims(mint(issuer).token)
    forged = jwt.encode(claims, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"typ": "at+jwt"})
    assert code_of(verifier, forged) is ReasonCode.INVALID_TOKEN


def test_alg_none(issuer, verifier, keyset) -> None:
    claims = unverified_claims(mint(issuer).token)
    for alg in ("none", "None", "NONE"):
        header = {"alg": alg, "typ": "at+jwt", "kid": keyset.current.kid}
        unsigned = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}."
        assert code_of(verifier, unsigned) is ReasonCode.INVALID_TOKEN
        assert code_of(verifier, unsigned + "AAAA") is ReasonCode.INVALID_TOKEN


def test_hs256_keyed_with_the_public_key(issuer, verifier, keyset) -> None:
    claims = unverified_claims(mint(issuer).token)
    header = {"alg": "HS256", "typ": "at+jwt", "kid": keyset.current.kid}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    public = keyset.current.public
    secrets = [
        public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        keyset.jwks()["keys"][0]["x"].encode(),
        json.dumps(keyset.jwks()["keys"][0]).encode(),
    ]
    for secret in secrets:
        sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        assert code_of(verifier, f"{signing_input}.{b64(sig)}") is ReasonCode.INVALID_TOKEN


def test_eddsa_header_over_a_non_eddsa_signature(issuer, verifier, keyset) -> None:
    header, payload, _ = mint(issuer).token.split(".")
    sig = hmac.new(b"secret", f"{header}.{payload}".encode(), hashlib.sha256).digest()
    assert code_of(verifier, f"{header}.{payload}.{b64(sig)}") is ReasonCode.INVALID_TOKEN


def test_tampered_payload_keeps_the_original_signature(issuer, verifier) -> None:
    header, payload, sig = mint(issuer).token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["authorization_details"][0]["arguments_sha256"] = arguments_sha256({**ARGS, "amount": 3000})
    forged = f"{header}.{b64(json.dumps(claims).encode())}.{sig}"
    assert code_of(verifier, forged, arguments={**ARGS, "amount": 3000}) is ReasonCode.INVALID_TOKEN


def test_tampered_header_keeps_the_original_signature(issuer, verifier, keyset) -> None:
    _, payload, sig = mint(issuer).token.split(".")
    header = {"kid": keyset.current.kid, "alg": "EdDSA", "typ": "at+jwt"}  # same members, other bytes
    assert code_of(verifier, f"{b64(json.dumps(header).encode())}.{payload}.{sig}") is ReasonCode.INVALID_TOKEN


def test_other_token_type_signed_by_the_real_key(issuer, verifier, keyset) -> None:
    claims = unverified_claims(mint(issuer).token)
    assert code_of(verifier, resign(keyset, claims, typ="JWT")) is ReasonCode.INVALID_TOKEN


def test_wrong_issuer(keyset, verifier, clock) -> None:
    other = ActionTokenIssuer(keyset, issuer="someone-else", clock=clock)
    assert code_of(verifier, mint(other).token) is ReasonCode.INVALID_TOKEN


def test_rotation_previous_key_verifies_once_then_not(keyset, issuer, clock) -> None:
    token = mint(issuer).token
    keyset.rotate()
    after_one = ActionTokenVerifier(PublicKeySet.from_jwks(keyset.jwks()), clock=clock)
    assert accepted(after_one, token)
    assert accepted(ActionTokenVerifier(keyset, clock=clock), token)
    keyset.rotate()
    after_two = ActionTokenVerifier(PublicKeySet.from_jwks(keyset.jwks()), clock=clock)
    assert code_of(after_two, token) is ReasonCode.INVALID_TOKEN
    assert code_of(ActionTokenVerifier(keyset, clock=clock), token) is ReasonCode.INVALID_TOKEN


# ----- time -------------------------------------------------------------------------------


def test_expired(issuer, verifier, clock) -> None:
    token = mint(issuer).token
    clock.advance(30 + LEEWAY)
    assert code_of(verifier, token) is ReasonCode.TOKEN_EXPIRED


def test_expired_within_leeway_is_accepted(issuer, verifier, clock) -> None:
    token = mint(issuer).token
    clock.advance(30 + LEEWAY - 0.5)
    assert accepted(verifier, token)


def test_not_yet_valid(keyset, verifier) -> None:
    ahead = ActionTokenIssuer(keyset, clock=FrozenClock(NOW + LEEWAY + 1))  # a minter whose clock runs ahead
    assert code_of(verifier, mint(ahead, task_expires_at=NOW + 900).token) is ReasonCode.TOKEN_NOT_YET_VALID


def test_not_yet_valid_within_leeway_is_accepted(keyset, verifier) -> None:
    ahead = ActionTokenIssuer(keyset, clock=FrozenClock(NOW + LEEWAY))
    assert accepted(verifier, mint(ahead).token)


def test_nbf_in_the_future(issuer, verifier, keyset) -> None:
    claims = {**unverified_claims(mint(issuer).token), "nbf": int(NOW) + LEEWAY + 1}
    assert code_of(verifier, resign(keyset, claims)) is ReasonCode.TOKEN_NOT_YET_VALID


def test_iat_in_the_future(issuer, verifier, keyset) -> None:
    claims = {**unverified_claims(mint(issuer).token), "iat": int(NOW) + 60}
    assert code_of(verifier, resign(keyset, claims)) is ReasonCode.TOKEN_NOT_YET_VALID


def test_time_is_the_injected_clock_not_the_wall_clock(keyset) -> None:
    # minted and checked in 2027: the wall clock (earlier) would call it not yet valid, a later one expired
    past = FrozenClock(NOW)
    token = mint(ActionTokenIssuer(keyset, clock=past)).token
    assert accepted(ActionTokenVerifier(keyset, clock=past), token)


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), True, "1800000030", None, -1])
def test_exp_must_be_a_finite_number(issuer, verifier, keyset, bad) -> None:
    claims = {**unverified_claims(mint(issuer).token), "exp": bad}
    assert code_of(verifier, resign(keyset, claims)) is ReasonCode.INVALID_TOKEN


# ----- audience, tool, arguments ----------------------------------------------------------


def test_wrong_audience(issuer, verifier) -> None:
    assert code_of(verifier, mint(issuer).token, audience="orders") is ReasonCode.TOKEN_AUDIENCE


def test_audience_list_is_refused(issuer, verifier, keyset) -> None:
    claims = {**unverified_claims(mint(issuer).token), "aud": ["payments", "orders"]}
    assert code_of(verifier, resign(keyset, claims)) is ReasonCode.TOKEN_AUDIENCE


def test_token_for_another_tool(issuer, verifier) -> None:
    token = mint(issuer, tool="payments.charge").token
    assert code_of(verifier, token) is ReasonCode.TOKEN_TOOL


def test_tampered_arguments(issuer, verifier) -> None:
    token = mint(issuer).token
    assert code_of(verifier, token, arguments={**ARGS, "amount": 3000}) is ReasonCode.TOKEN_ARGUMENTS


def test_arguments_with_an_extra_or_retyped_value(issuer, verifier) -> None:
    token = mint(issuer).token
    assert code_of(verifier, token, arguments={**ARGS, "extra": True}) is ReasonCode.TOKEN_ARGUMENTS
    assert code_of(verifier, token, arguments={**ARGS, "amount": "30"}) is ReasonCode.TOKEN_ARGUMENTS
    assert code_of(verifier, token, arguments={}) is ReasonCode.TOKEN_ARGUMENTS


def test_arguments_that_are_not_json(issuer, verifier) -> None:
    token = mint(issuer).token
    assert code_of(verifier, token, arguments={**ARGS, "amount": float("nan")}) is ReasonCode.TOKEN_ARGUMENTS
    assert code_of(verifier, token, arguments={**ARGS, "amount": object()}) is ReasonCode.TOKEN_ARGUMENTS


def test_reordered_arguments_and_number_spelling_still_verify(issuer, verifier) -> None:
    reordered = json.loads('{"currency": "EUR", "amount": 30.0, "order_id": "ORD-7"}')
    assert list(reordered) != list(ARGS)
    assert accepted(verifier, mint(issuer).token, arguments=reordered)


def test_exactly_one_authorization_detail(issuer, verifier, keyset) -> None:
    claims = unverified_claims(mint(issuer).token)
    detail = claims["authorization_details"][0]
    for details in ([detail, detail], [], detail, None, [{**detail, "type": "payment_initiation"}]):
        assert code_of(verifier, resign(keyset, {**claims, "authorization_details": details})) is (
            ReasonCode.INVALID_TOKEN
        )
    assert code_of(verifier, resign(keyset, {k: v for k, v in claims.items() if k != "authorization_details"})) is (
        ReasonCode.INVALID_TOKEN
    )


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf", "sub", "aud", "iss", "jti"])
def test_required_claims(issuer, verifier, keyset, claim) -> None:
    claims = {k: v for k, v in unverified_claims(mint(issuer).token).items() if k != claim}
    assert code_of(verifier, resign(keyset, claims)) is ReasonCode.INVALID_TOKEN


# ----- single use ---------------------------------------------------------------------------


async def test_replay_is_refused(issuer, verifier, ledger) -> None:
    token = mint(issuer).token
    await verifier.verify_and_consume(token, tool=TOOL, arguments=ARGS, audience="payments", ledger=ledger)
    with pytest.raises(TokenError) as exc:
        await verifier.verify_and_consume(token, tool=TOOL, arguments=ARGS, audience="payments", ledger=ledger)
    assert exc.value.code is ReasonCode.TOKEN_REPLAYED


async def test_replay_is_refused_after_a_restart(issuer, verifier, tmp_path) -> None:
    token = mint(issuer).token
    first = SqliteJtiLedger(tmp_path / "restart.db")
    await verifier.verify_and_consume(token, tool=TOOL, arguments=ARGS, audience="payments", ledger=first)
    first.close()
    second = SqliteJtiLedger(tmp_path / "restart.db")
    try:
        with pytest.raises(TokenError) as exc:
            await verifier.verify_and_consume(token, tool=TOOL, arguments=ARGS, audience="payments", ledger=second)
        assert exc.value.code is ReasonCode.TOKEN_REPLAYED
    finally:
        second.close()


async def test_failed_verification_does_not_burn_the_token(issuer, verifier, ledger) -> None:
    token = mint(issuer).token
    with pytest.raises(TokenError):
        await verifier.verify_and_consume(token, tool=TOOL, arguments={}, audience="payments", ledger=ledger)
    await verifier.verify_and_consume(token, tool=TOOL, arguments=ARGS, audience="payments", ledger=ledger)


async def test_concurrent_redeemers_exactly_one_wins(issuer, verifier, ledger) -> None:
    token = mint(issuer).token

    async def redeem() -> ReasonCode | None:
        try:
            await verifier.verify_and_consume(token, tool=TOOL, arguments=ARGS, audience="payments", ledger=ledger)
            return None
        except TokenError as exc:
            return exc.code

    results = await asyncio.gather(*(redeem() for _ in range(32)))
    assert results.count(None) == 1
    assert results.count(ReasonCode.TOKEN_REPLAYED) == 31


def test_concurrent_ledgers_on_one_file_exactly_one_wins(issuer, verifier, tmp_path) -> None:
    """Separate connections (as in separate tool-server workers) race on the same jti."""
    token = mint(issuer).token
    path = tmp_path / "shared.db"
    ledgers = [SqliteJtiLedger(path) for _ in range(8)]
    barrier = threading.Barrier(len(ledgers))
    results: list[ReasonCode | None] = []

    def worker(led: SqliteJtiLedger) -> None:
        async def go() -> ReasonCode | None:
            barrier.wait()
            try:
                await verifier.verify_and_consume(token, tool=TOOL, arguments=ARGS, audience="payments", ledger=led)
                return None
            except TokenError as exc:
                return exc.code

        results.append(asyncio.run(go()))

    asyncio.run(ledgers[0].consume("warm-up", expires_at=NOW, now=NOW))  # the file exists, as when deployed
    threads = [threading.Thread(target=worker, args=(led,)) for led in ledgers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for led in ledgers:
        led.close()
    assert results.count(None) == 1
    assert results.count(ReasonCode.TOKEN_REPLAYED) == len(ledgers) - 1


class RevokingLedger:
    """Stands in for the gateway store, which answers REVOKED for a token of an ended task.

    The store's real revocation is tested in test_store.py; this checks only how the verifier
    maps that answer.
    """

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def consume(self, jti: str, *, expires_at: float, now: float) -> ConsumeOutcome:
        self.asked.append(jti)
        return ConsumeOutcome.REVOKED


async def test_revoked_token(issuer, verifier) -> None:
    minted, ledger = mint(issuer), RevokingLedger()
    with pytest.raises(TokenError) as exc:
        await verifier.verify_and_consume(minted.token, tool=TOOL, arguments=ARGS, audience="payments", ledger=ledger)
    assert exc.value.code is ReasonCode.TOKEN_REVOKED
    assert ledger.asked == [minted.jti]


async def test_ledger_purges_long_expired_ids_only(ledger, tmp_path) -> None:
    old = NOW - SqliteJtiLedger.PURGE_AFTER - 1
    assert await ledger.consume("old-jti", expires_at=old, now=old) is ConsumeOutcome.CONSUMED
    assert await ledger.consume("live-jti", expires_at=NOW + 30, now=NOW - 120) is ConsumeOutcome.CONSUMED
    assert await ledger.consume("new-jti", expires_at=NOW + 30, now=NOW) is ConsumeOutcome.CONSUMED  # purges
    with closing(sqlite3.connect(tmp_path / "jti.db")) as db:
        left = {row[0] for row in db.execute("SELECT jti FROM seen_jti")}
    assert left == {"live-jti", "new-jti"}
    assert await ledger.consume("live-jti", expires_at=NOW + 30, now=NOW) is ConsumeOutcome.REPLAYED


async def test_ledger_failure_is_a_store_error_not_a_pass(tmp_path) -> None:
    led = SqliteJtiLedger(tmp_path / "missing-dir" / "jti.db")
    try:
        with pytest.raises(StoreError):
            await led.consume("jti", expires_at=NOW, now=NOW)
    finally:
        led.close()
    with pytest.raises(StoreError, match="closed"):
        await led.consume("jti", expires_at=NOW, now=NOW)


# ----- anything at all ----------------------------------------------------------------------


def only_token_errors(verifier: ActionTokenVerifier, samples: list[object]) -> int:
    """Verify every sample: each must be a ``TokenError`` from a foreseen check; count passes."""
    passed = 0
    for sample in samples:
        try:
            verifier.verify(sample, tool=TOOL, arguments=ARGS, audience="payments")  # type: ignore[arg-type]
            passed += 1
        except TokenError as exc:
            assert isinstance(exc.code, ReasonCode)
            assert not exc.message.startswith("unexpected"), (sample, exc.message)
    return passed


def test_garbage_and_mutations_are_always_token_errors(issuer, verifier) -> None:
    rng = random.Random(1234)
    good = mint(issuer).token
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ \x00é{}\"[]"
    samples: list[object] = ["", ".", "..", "a.b.c", "e30.e30.", "e30.e30.e30", "W10.e30.AA", None, 17, b"bytes",
                             good.encode(), "x" * 20000, good + ".", "." + good, good.replace(".", "..", 1)]
    for _ in range(300):
        samples.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 200))))
    for _ in range(600):  # change one character of a valid token
        i = rng.randrange(len(good))
        samples.append(good[:i] + rng.choice(alphabet.replace(good[i], "")) + good[i + 1 :])
    for _ in range(100):
        samples.append(good[: rng.randrange(len(good))])
    assert only_token_errors(verifier, samples) == 0


def test_mutated_header_and_claims_are_always_token_errors(issuer, verifier, keyset) -> None:
    rng = random.Random(4321)
    header, payload, sig = mint(issuer).token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    head = json.loads(base64.urlsafe_b64decode(header + "=="))
    values: list[Any] = [
        None, True, False, 0, -1, 2**64, 1e308, "", "x" * 5000, [], {}, [1], {"a": 1}, "payments", [None],
    ]
    resigned_samples: list[object] = []
    samples: list[object] = []
    for key in [*claims, "extra"]:
        for value in values:
            mutated = {**claims, key: value}
            samples.append(f"{header}.{b64(json.dumps(mutated).encode())}.{sig}")  # original signature
            resigned_samples.append(resign(keyset, mutated))
        for value in values:
            detail = {**claims["authorization_details"][0], rng.choice(list(claims["authorization_details"][0])): value}
            resigned_samples.append(resign(keyset, {**claims, "authorization_details": [detail]}))
    for key in [*head, "crit", "b64", "jku", "jwk"]:
        for value in values:
            samples.append(f"{b64(json.dumps({**head, key: value}).encode())}.{payload}.{sig}")
    assert only_token_errors(verifier, samples) == 0
    # signed by the real key, some changes are harmless (an extra claim, another task name) and
    # pass; what matters is that nothing else ever escapes
    assert only_token_errors(verifier, resigned_samples) < len(resigned_samples)


# ----- the gateway's own check before it forwards (no second signature check) ---------------


def test_check_minted_gives_what_verify_gives_and_refuses_what_it_refuses(issuer, verifier, clock) -> None:
    """``check_minted`` reads the claims the gateway has just signed instead of verifying the
    signature again, and applies every other check ``verify`` applies to the call about to go
    upstream: audience, tool, the arguments' digest, the lifetime."""
    minted = mint(issuer)
    call = {"tool": TOOL, "arguments": ARGS, "audience": "payments"}
    assert verifier.check_minted(minted.claims, **call) == verifier.verify(minted.token, **call)

    def refused(claims: dict[str, Any], **kw: Any) -> ReasonCode:
        with pytest.raises(TokenError) as exc:
            verifier.check_minted(claims, **{**call, **kw})
        return exc.value.code

    assert refused(minted.claims, arguments={**ARGS, "amount": 3000}) is ReasonCode.TOKEN_ARGUMENTS
    assert refused(minted.claims, arguments={"amount": float("nan")}) is ReasonCode.TOKEN_ARGUMENTS
    assert refused(minted.claims, tool="payments.payout") is ReasonCode.TOKEN_TOOL
    assert refused(minted.claims, audience="orders") is ReasonCode.TOKEN_AUDIENCE
    assert refused({**minted.claims, "authorization_details": []}) is ReasonCode.INVALID_TOKEN
    assert refused({k: v for k, v in minted.claims.items() if k != "jti"}) is ReasonCode.INVALID_TOKEN
    assert refused("not claims") is ReasonCode.INVALID_TOKEN  # type: ignore[arg-type]
    clock.advance(31 + LEEWAY)
    assert refused(minted.claims) is ReasonCode.TOKEN_EXPIRED
