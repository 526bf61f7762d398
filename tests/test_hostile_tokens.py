"""Hostile tokens: property-based tests of the action-token verifier and the identity verifier.

Real Ed25519 keys on disk and real signatures.  Random JWT-shaped strings and single
mutations of a real token (header, claims, signature, encoding) must all be refused with the
project's error: a ``TokenError`` whose code names what is wrong (``token_expired``,
``token_audience``, ``token_arguments``...) for the action-token verifier, an
``IdentityError`` (``unauthenticated``) for workload tokens; never accepted, never any other
exception, and never through the verifiers' catch-all for the unforeseen.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from intentgate.canonical import arguments_sha256
from intentgate.clock import FrozenClock
from intentgate.errors import ReasonCode, TokenError
from intentgate.identity import DevIssuer, IdentityError, IdentityVerifier
from intentgate.keys import KeySet, PublicKeySet
from intentgate.tokens import ActionTokenIssuer
from intentgate.verify import ActionTokenVerifier
from tests.conftest import NOW

ARGS = {"order_id": "ORD-7", "amount": 30, "currency": "EUR"}
TOOL = "payments.refund"
AUDIENCE = "payments"
LEEWAY = 5
AGENT = "spiffe://example.org/agent/support-1"
AGENT_LEEWAY = 30

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


# ----- material: module-scoped, so that hypothesis can call the tests many times ---------


@pytest.fixture(scope="module")
def keyset(tmp_path_factory: pytest.TempPathFactory) -> KeySet:
    return KeySet.open_or_create(tmp_path_factory.mktemp("hostile-tokens") / "keys", clock=FrozenClock(NOW))


@pytest.fixture(scope="module")
def verifier(keyset: KeySet) -> ActionTokenVerifier:
    # the tool server's verifier: public keys only, from the published JWKS
    return ActionTokenVerifier(PublicKeySet.from_jwks(keyset.jwks()), clock=FrozenClock(NOW), leeway=LEEWAY)


@pytest.fixture(scope="module")
def good(keyset: KeySet) -> str:
    return ActionTokenIssuer(keyset, clock=FrozenClock(NOW)).mint(
        agent=AGENT, task_id="tsk_1", intent="refund-order", step="refund", upstream=AUDIENCE, tool=TOOL,
        arguments_sha256=arguments_sha256(ARGS), task_expires_at=NOW + 900,
    ).token


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> DevIssuer:
    clock = FrozenClock(NOW)
    return DevIssuer(KeySet.open_or_create(tmp_path_factory.mktemp("agent-issuer"), clock=clock), clock=clock)


@pytest.fixture(scope="module")
def identities(dev: DevIssuer) -> IdentityVerifier:
    # no cache: every sample is verified from scratch
    return IdentityVerifier([dev.issuer_config()], clock=FrozenClock(NOW), leeway=AGENT_LEEWAY, cache_size=0)


# ----- helpers ---------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    head, payload, _ = token.split(".")
    return json.loads(unb64(head)), json.loads(unb64(payload))


def sign(private: Ed25519PrivateKey, header: dict[str, Any], claims: Any) -> str:
    """Sign anything with an Ed25519 key, by hand (pyjwt's encoder refuses some of these)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(private.sign(signing_input.encode()))}"


def refusal(verifier: ActionTokenVerifier, token: Any, **call: Any) -> ReasonCode:
    """The code the verifier refuses ``token`` with; fails the test on acceptance or any other exception."""
    try:
        claims = verifier.verify(token, **{"tool": TOOL, "arguments": ARGS, "audience": AUDIENCE, **call})
    except TokenError as exc:
        assert isinstance(exc.code, ReasonCode)
        assert exc.message and not exc.message.startswith("unexpected"), exc.message  # a foreseen check
        return exc.code
    pytest.fail(f"accepted: {claims!r}")


def agent_refusal(identities: IdentityVerifier, token: Any) -> str:
    try:
        identity = identities.verify(token)
    except IdentityError as exc:
        assert exc.code is ReasonCode.UNAUTHENTICATED
        assert exc.message and not exc.message.startswith("malformed workload token"), exc.message
        return exc.message
    pytest.fail(f"accepted: {identity!r}")


json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=8,
)
segments = st.one_of(
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=80),
    json_values.map(lambda v: b64(json.dumps(v).encode())),
    st.binary(max_size=60).map(b64),
)


# ----- anything JWT-shaped, or not ----------------------------------------------------------


@FUZZ
@given(token=st.one_of(st.text(max_size=300), st.binary(max_size=300), json_values,
                       st.tuples(segments, segments, segments).map(".".join),
                       st.lists(segments, min_size=1, max_size=6).map(".".join)))
@example(token="e30.e30.e30")
@example(token="eyJhbGciOiJub25lIn0.e30.")
@example(token="W10.e30.AA")  # a header that is JSON but not an object
@example(token="x" * 20000)
@example(token=[None])  # regression: an unhashable token was a TypeError in the identity cache
def test_random_strings_are_invalid_tokens(verifier, identities, token) -> None:
    assert refusal(verifier, token) is ReasonCode.INVALID_TOKEN
    agent_refusal(identities, token)


@FUZZ
@given(header=json_values, claims=json_values)
def test_anything_signed_by_the_real_key_in_the_wrong_shape_is_invalid(verifier, keyset, header, claims) -> None:
    """A buggy or confused minter holding the real key: the shape of header and claims is still checked."""
    token = sign(keyset.current.private, {"alg": "EdDSA", "kid": keyset.current.kid, "typ": "at+jwt",
                                          **(header if isinstance(header, dict) else {"x": header})}, claims)
    assert refusal(verifier, token) is ReasonCode.INVALID_TOKEN


# ----- one change to a real token: each refused with the code that names it -------------------


@FUZZ
@given(alg=st.sampled_from(["none", "None", "HS256", "HS512", "RS256", "ES256", "PS256", "EdDSA ", "eddsa", "", None, 1]),
       how=st.sampled_from(["empty", "hmac-public-jwk", "hmac-public-raw", "original"]))
def test_other_algorithms_are_refused(verifier, keyset, good, alg, how) -> None:
    head, claims = parts(good)
    signing_input = f"{b64(json.dumps({**head, 'alg': alg}).encode())}.{good.split('.')[1]}"
    secret = {"empty": b"", "original": b"",
              "hmac-public-jwk": json.dumps(keyset.jwks()["keys"][0]).encode(),
              "hmac-public-raw": unb64(keyset.jwks()["keys"][0]["x"])}[how]
    signature = good.split(".")[2] if how == "original" else b64(
        hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()) if how != "empty" else ""
    assert refusal(verifier, f"{signing_input}.{signature}") is ReasonCode.INVALID_TOKEN


@FUZZ
@given(kid=json_values)
def test_other_key_ids_are_refused(verifier, keyset, good, kid) -> None:
    head, claims = parts(good)
    # signed with the real key under a wrong kid, and with an attacker's key under any kid
    assert refusal(verifier, sign(keyset.current.private, {**head, "kid": kid}, claims)) is ReasonCode.INVALID_TOKEN
    forged = sign(Ed25519PrivateKey.generate(), {**head, "kid": kid}, claims)
    assert refusal(verifier, forged) is ReasonCode.INVALID_TOKEN


def test_attackers_key_under_the_real_kid_is_refused(verifier, keyset, good) -> None:
    head, claims = parts(good)
    assert refusal(verifier, sign(Ed25519PrivateKey.generate(), head, claims)) is ReasonCode.INVALID_TOKEN


@FUZZ
@given(typ=json_values.filter(lambda t: t != "at+jwt"))
def test_other_token_types_are_refused(verifier, keyset, good, typ) -> None:
    head, claims = parts(good)
    assert refusal(verifier, sign(keyset.current.private, {**head, "typ": typ}, claims)) is ReasonCode.INVALID_TOKEN


@FUZZ
@given(age=st.integers(min_value=LEEWAY, max_value=10**9))
def test_expired_tokens_are_token_expired(verifier, keyset, good, age) -> None:
    head, claims = parts(good)
    claims.update(exp=int(NOW) - age, iat=int(NOW) - age - 30, nbf=int(NOW) - age - 30)
    assert refusal(verifier, sign(keyset.current.private, head, claims)) is ReasonCode.TOKEN_EXPIRED


@FUZZ
@given(ahead=st.integers(min_value=LEEWAY + 1, max_value=10**9), which=st.sampled_from(["nbf", "iat", "both"]))
def test_future_tokens_are_not_yet_valid(verifier, keyset, good, ahead, which) -> None:
    head, claims = parts(good)
    future = int(NOW) + ahead
    claims["exp"] = future + 30
    for name in (["nbf", "iat"] if which == "both" else [which]):
        claims[name] = future
    assert refusal(verifier, sign(keyset.current.private, head, claims)) is ReasonCode.TOKEN_NOT_YET_VALID


@FUZZ
@given(name=st.sampled_from(["exp", "nbf", "iat"]),
       value=st.one_of(st.text(max_size=12), st.booleans(), st.none(), st.lists(st.integers(), max_size=2),
                       st.integers(max_value=-1), st.just({"$date": 1})))
def test_time_claims_that_are_not_numbers_are_invalid(verifier, keyset, good, name, value) -> None:
    head, claims = parts(good)
    assert refusal(verifier, sign(keyset.current.private, head, {**claims, name: value})) is ReasonCode.INVALID_TOKEN


@FUZZ
@given(aud=st.text(min_size=1, max_size=40).filter(lambda a: a != AUDIENCE))  # an empty aud is a missing claim
def test_tokens_for_another_upstream_are_token_audience(verifier, keyset, good, aud) -> None:
    head, claims = parts(good)
    assert refusal(verifier, sign(keyset.current.private, head, {**claims, "aud": aud})) is ReasonCode.TOKEN_AUDIENCE
    # and the real token presented to another upstream
    assert refusal(verifier, good, audience=aud) is ReasonCode.TOKEN_AUDIENCE


@FUZZ
@given(aud=json_values.filter(lambda a: not isinstance(a, str)))
def test_audience_that_is_not_one_string_is_refused(verifier, keyset, good, aud) -> None:
    head, claims = parts(good)
    code = refusal(verifier, sign(keyset.current.private, head, {**claims, "aud": aud}))
    assert code in {ReasonCode.INVALID_TOKEN, ReasonCode.TOKEN_AUDIENCE}


@FUZZ
@given(iss=json_values.filter(lambda i: i != "intentgate"))
def test_other_issuers_are_invalid(verifier, keyset, good, iss) -> None:
    head, claims = parts(good)
    assert refusal(verifier, sign(keyset.current.private, head, {**claims, "iss": iss})) is ReasonCode.INVALID_TOKEN


@FUZZ
@given(tool=st.text(max_size=40).filter(lambda t: t != TOOL))
def test_tokens_for_another_tool_are_token_tool(verifier, good, tool) -> None:
    assert refusal(verifier, good, tool=tool) is ReasonCode.TOKEN_TOOL


@FUZZ
@given(arguments=st.dictionaries(st.text(max_size=12), json_values, max_size=5).filter(
    lambda a: a != ARGS))
@example(arguments={**ARGS, "amount": 3000})
@example(arguments={**ARGS, "amount": "30"})
@example(arguments={**ARGS, "extra": None})
@example(arguments={"order_id": "ORD-7", "amount": 30})
@example(arguments={**ARGS, "amount": 2**64})
def test_other_arguments_are_token_arguments(verifier, good, arguments) -> None:
    assert refusal(verifier, good, arguments=arguments) is ReasonCode.TOKEN_ARGUMENTS


@FUZZ
@given(arguments=st.one_of(st.just({**ARGS, "amount": float("nan")}), st.just({**ARGS, "amount": float("inf")}),
                           st.just({**ARGS, "when": b"bytes"}), st.just({**ARGS, "x": object()}),
                           st.just({**ARGS, "amount": 2**53 + 1})))
def test_arguments_that_cannot_be_canonicalised_are_token_arguments(verifier, good, arguments) -> None:
    assert refusal(verifier, good, arguments=arguments) is ReasonCode.TOKEN_ARGUMENTS


@FUZZ
@given(field=st.sampled_from(["type", "tool", "arguments_sha256", "task", "intent", "step"]), value=json_values)
def test_authorization_detail_mutations_never_widen_the_token(verifier, keyset, good, field, value) -> None:
    """Re-signed with the real key: the detail's shape is checked, and its tool and digest bind the call."""
    head, claims = parts(good)
    detail = {**claims["authorization_details"][0], field: value}
    if detail == claims["authorization_details"][0]:
        return
    token = sign(keyset.current.private, head, {**claims, "authorization_details": [detail]})
    if field in {"task", "intent", "step"} and isinstance(value, str) and value:
        # names the token carries for the tool server's information: a valid shape, still accepted
        assert verifier.verify(token, tool=TOOL, arguments=ARGS, audience=AUDIENCE).detail.step == detail["step"]
        return
    code = refusal(verifier, token)
    if field == "tool" and isinstance(value, str) and len(value) >= 3:
        assert code is ReasonCode.TOKEN_TOOL
    elif field == "arguments_sha256" and isinstance(value, str) and len(value) == 64 and set(value) <= set(
            "0123456789abcdef"):
        assert code is ReasonCode.TOKEN_ARGUMENTS
    else:
        assert code is ReasonCode.INVALID_TOKEN


@FUZZ
@given(data=st.data())
def test_signature_mutations_are_invalid(verifier, good, data) -> None:
    head, payload, sig = good.split(".")
    raw = bytearray(unb64(sig))
    i = data.draw(st.integers(min_value=0, max_value=len(raw) - 1), label="byte")
    raw[i] ^= data.draw(st.integers(min_value=1, max_value=255), label="xor")
    assert refusal(verifier, f"{head}.{payload}.{b64(bytes(raw))}") is ReasonCode.INVALID_TOKEN


@FUZZ
@given(data=st.data())
def test_character_level_mutations_are_refused_unless_they_decode_to_the_same_token(verifier, good, data) -> None:
    """Change, insert or delete characters anywhere (padding, dots, base64 garbage included).

    The one mutation that may pass is a re-spelling of the same bytes: base64url leaves the
    low bits of a segment's last character unused, so the signature segment has several
    spellings.  Such a token is the same token (same signature, same ``jti``), which the
    ledger burns once whatever its spelling.
    """
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ \x00é"
    i = data.draw(st.integers(min_value=0, max_value=len(good)), label="at")
    op = data.draw(st.sampled_from(["replace", "insert", "delete", "pad"]), label="op")
    ch = data.draw(st.sampled_from(alphabet), label="char")
    if op == "replace" and i < len(good):
        mutated = good[:i] + ch + good[i + 1:]
    elif op == "insert":
        mutated = good[:i] + ch + good[i:]
    elif op == "delete" and i < len(good):
        mutated = good[:i] + good[i + 1:]
    else:
        mutated = ".".join(s + "=" * data.draw(st.integers(0, 3)) for s in good.split("."))
    if mutated == good:
        return
    try:
        claims = verifier.verify(mutated, tool=TOOL, arguments=ARGS, audience=AUDIENCE)
    except TokenError as exc:
        assert exc.code is ReasonCode.INVALID_TOKEN and not exc.message.startswith("unexpected"), exc.message
        return
    assert [unb64(s) for s in mutated.split(".")] == [unb64(s) for s in good.split(".")]
    assert claims.jti == parts(good)[1]["jti"]


# ----- workload tokens (identity.py) ---------------------------------------------------------


def agent_token(dev: DevIssuer) -> str:
    return dev.mint(AGENT, ttl_seconds=3600)


def test_real_workload_token_is_accepted(identities, dev) -> None:
    assert identities.verify(agent_token(dev)).id == AGENT  # the baseline every mutation departs from


@FUZZ
@given(claim=st.sampled_from(["iss", "sub", "aud", "exp", "iat", "nbf", "jti"]), value=json_values)
@example(claim="exp", value=int(NOW) - AGENT_LEEWAY)
@example(claim="nbf", value=int(NOW) + AGENT_LEEWAY + 1)
@example(claim="sub", value="")
@example(claim="sub", value="x" * 513)
@example(claim="aud", value="intentgate-admin")
@example(claim="exp", value=float("inf"))  # regression: "exp": Infinity was accepted, never expiring
@example(claim="exp", value=float("nan"))
@example(claim="nbf", value=float("nan"))
@example(claim="iat", value=2**1100)  # an integer beyond a float
@example(claim="exp", value=True)
def test_workload_claim_mutations_are_unauthenticated(identities, dev, claim, value) -> None:
    head, claims = parts(agent_token(dev))
    mutated = {**claims, claim: value}
    token = sign(dev.keyset.current.private, head, mutated)
    harmless = (
        (claim == "jti")
        or (claim == "sub" and isinstance(value, str) and 0 < len(value) <= 512)
        or (claim == "aud" and (value == "intentgate" or (isinstance(value, list) and "intentgate" in value)))
        or (claim in {"iat", "nbf"} and type(value) in (int, float) and value <= NOW + AGENT_LEEWAY
            and claims["exp"] >= value)
        or (claim == "exp" and type(value) in (int, float) and NOW < value + AGENT_LEEWAY < float("inf"))
    )
    if harmless:  # still a well-formed, correctly signed token: accepted for what it says
        try:
            assert identities.verify(token).id == mutated["sub"]
        except IdentityError:
            pass  # pyjwt may be stricter than the list above (a float iat, say); refused is fine
        return
    agent_refusal(identities, token)


@FUZZ
@given(alg=st.sampled_from(["none", "HS256", "HS384", "RS256", "ES256", "PS256", "EdDSA"]),
       kid=st.one_of(st.none(), st.just("real"), st.text(max_size=20)),
       key=st.sampled_from(["attacker", "hmac-public", "none"]))
def test_workload_header_and_key_attacks_are_unauthenticated(identities, dev, alg, kid, key) -> None:
    head, claims = parts(agent_token(dev))
    header = {**head, "alg": alg, "kid": dev.keyset.current.kid if kid == "real" else kid}
    if key == "attacker":
        token = sign(Ed25519PrivateKey.generate(), header, claims)
    else:
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        secret = json.dumps(dev.keyset.jwks()["keys"][0]).encode()
        sig = b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()) if key == "hmac-public" else ""
        token = f"{signing_input}.{sig}"
    agent_refusal(identities, token)


@FUZZ
@given(data=st.data())
def test_workload_token_character_mutations_are_refused(identities, dev, data) -> None:
    good = agent_token(dev)
    i = data.draw(st.integers(min_value=0, max_value=len(good) - 1), label="at")
    ch = data.draw(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ \x00"))
    mutated = good[:i] + ch + good[i + 1:]
    if mutated == good:
        return
    try:
        identity = identities.verify(mutated)
    except IdentityError as exc:
        assert exc.code is ReasonCode.UNAUTHENTICATED
        assert not exc.message.startswith("malformed workload token"), exc.message
        return
    # only a re-spelling of the same signature bytes (see the action-token test above)
    assert [unb64(s) for s in mutated.split(".")] == [unb64(s) for s in good.split(".")]
    assert identity.id == AGENT



# ----- reviewer tokens (review/auth.py): the same verifier, one more layer ------------------


@pytest.fixture(scope="module")
def reviewers(tmp_path_factory: pytest.TempPathFactory, dev: DevIssuer, identities: IdentityVerifier) -> Any:
    from intentgate.config import ReviewConfig
    from intentgate.review import AdminTokenIssuer
    from intentgate.review.auth import ReviewerAuth

    clock = FrozenClock(NOW)
    admin_keys = KeySet.open_or_create(tmp_path_factory.mktemp("admin-keys"), clock=clock)
    auth = ReviewerAuth(ReviewConfig(), admin_keys=admin_keys, agents=identities, clock=clock)
    return auth, AdminTokenIssuer(admin_keys, clock=clock)


@FUZZ
@given(where=st.sampled_from(["header", "claims"]), key=st.sampled_from(
    ["alg", "kid", "typ", "iss", "sub", "aud", "exp", "iat", "nbf", "roles", "jti"]), value=json_values)
@example(where="header", key="typ", value="JWT")  # an admin-key signature without the admin typ
@example(where="claims", key="roles", value=[])
@example(where="claims", key="roles", value="intentgate-reviewer")
@example(where="claims", key="exp", value=float("inf"))
def test_reviewer_token_mutations_are_401_or_403(reviewers, dev, where, key, value) -> None:
    from intentgate.review.auth import ReviewerDenied

    auth, admin = reviewers
    head, claims = parts(admin.mint("alice", 600))
    if where == "header":
        head = {**head, key: value}
    else:
        claims = {**claims, key: value}
    token = sign(admin.keyset.current.private, head, claims)
    try:
        reviewer = auth.authenticate(token)
    except ReviewerDenied as exc:
        assert exc.status in (401, 403) and exc.code is ReasonCode.UNAUTHENTICATED
        return
    # accepted: only for a change that leaves a valid admin token (a name, another jti, a later exp)
    assert head["typ"] == "intentgate-admin+jwt" and head["alg"] == "EdDSA"
    assert claims["iss"] == claims["aud"] == "intentgate-admin" and "intentgate-reviewer" in claims["roles"]
    assert reviewer.id == claims["sub"] and reviewer.via == "admin_token"


def test_agent_tokens_are_never_reviewers(reviewers, dev) -> None:
    from intentgate.review.auth import ReviewerDenied

    auth, _ = reviewers
    with pytest.raises(ReviewerDenied) as exc:
        auth.authenticate(agent_token(dev))
    assert exc.value.status == 403
