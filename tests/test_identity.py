"""Workload identity: dev issuer, SPIFFE JWT-SVIDs and OIDC tokens against configured issuers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError

from intentgate.clock import FrozenClock
from intentgate.identity import DevIssuer, IdentityError, IdentityVerifier, IssuerConfig
from intentgate.keys import KeySet
from tests.conftest import NOW, ROOT

SPIFFE_ISS = "https://spire.example.org"


@pytest.fixture
def dev(tmp_path: Path, clock: FrozenClock) -> DevIssuer:
    return DevIssuer(KeySet.open_or_create(tmp_path / "agent-issuer", clock=clock), clock=clock)


@pytest.fixture
def spire_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def spire_config(spire_key, tmp_path: Path) -> IssuerConfig:
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(spire_key.public_key()))
    jwk.update(kid="spire-1", alg="ES256", use="sig")
    path = tmp_path / "spire-jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    return IssuerConfig(kind="spiffe", issuer=SPIFFE_ISS, audience="intentgate", algorithms=["ES256"],
                        jwks_file=path, trust_domain="example.org")


@pytest.fixture
def verifier(dev, spire_config, clock) -> IdentityVerifier:
    return IdentityVerifier([dev.issuer_config(), spire_config], clock=clock, leeway=30)


def svid(key, sub: str = "spiffe://example.org/agent/support-1", **over) -> str:
    claims = {"iss": SPIFFE_ISS, "sub": sub, "aud": ["intentgate"], "iat": int(NOW), "exp": int(NOW) + 300}
    claims.update(over)
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": "spire-1"})


def test_dev_issuer_round_trip(dev, verifier) -> None:
    ident = verifier.verify(dev.mint("spiffe://example.org/agent/support-1"))
    assert ident.id == "spiffe://example.org/agent/support-1" and ident.issuer == "intentgate-dev"


def test_spiffe_svid_accepted(spire_key, verifier) -> None:
    ident = verifier.verify(svid(spire_key))
    assert ident.id == "spiffe://example.org/agent/support-1" and ident.issuer == SPIFFE_ISS


@pytest.mark.parametrize(
    "sub",
    ["spiffe://evil.example/agent/support-1", "spiffe://example.org", "https://example.org/agent/x", "spiffe://example.org/a//b"],
)
def test_spiffe_subject_must_be_in_trust_domain(spire_key, verifier, sub) -> None:
    with pytest.raises(IdentityError, match="SPIFFE ID"):
        verifier.verify(svid(spire_key, sub=sub))


def test_expired_and_not_yet_valid(dev, verifier, clock) -> None:
    token = dev.mint("spiffe://example.org/agent/a", ttl_seconds=60)
    clock.advance(60 + 29)
    assert verifier.verify(token)  # within leeway
    clock.advance(2)
    with pytest.raises(IdentityError, match="expired"):
        verifier.verify(token)


def test_wrong_audience(spire_key, verifier) -> None:
    with pytest.raises(IdentityError, match="InvalidAudience"):
        verifier.verify(svid(spire_key, aud="someone-else"))


def test_untrusted_issuer_and_unknown_key(spire_key, verifier) -> None:
    with pytest.raises(IdentityError, match="untrusted issuer"):
        verifier.verify(svid(spire_key, iss="https://evil.example"))
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(IdentityError, match="rejected"):
        verifier.verify(svid(other))  # right kid, wrong key
    forged = jwt.encode({"iss": SPIFFE_ISS, "sub": "spiffe://example.org/x", "aud": "intentgate", "iat": int(NOW),
                         "exp": int(NOW) + 60}, other, algorithm="ES256", headers={"kid": "attacker"})
    with pytest.raises(IdentityError, match="unknown key id"):
        verifier.verify(forged)


def test_algorithm_pinned_per_issuer(dev, verifier) -> None:
    claims = jwt.decode(dev.mint("spiffe://example.org/agent/a"), options={"verify_signature": False})
    head = base64.urlsafe_b64encode(json.dumps({"alg": "none", "kid": dev.keyset.current.kid}).encode()).rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
    with pytest.raises(IdentityError, match="not allowed"):
        verifier.verify(f"{head.decode()}.{body.decode()}.")
    hs_head = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "kid": dev.keyset.current.kid}).encode()).rstrip(b"=")
    signing_input = f"{hs_head.decode()}.{body.decode()}"
    secret = json.dumps(dev.keyset.jwks()["keys"][0]).encode()
    sig = base64.urlsafe_b64encode(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()).rstrip(b"=")
    with pytest.raises(IdentityError, match="not allowed"):
        verifier.verify(f"{signing_input}.{sig.decode()}")


@pytest.mark.parametrize("garbage", [None, "", "abc", "a.b.c", "e30.e30.e30", "x" * 20000])
def test_garbage_is_unauthenticated(verifier, garbage) -> None:
    with pytest.raises(IdentityError) as exc:
        verifier.verify(garbage)
    assert exc.value.code.value == "unauthenticated"


def test_issuer_config_refuses_symmetric_algorithms_and_missing_keys(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="asymmetric"):
        IssuerConfig(kind="oidc", issuer="x", audience="y", algorithms=["HS256"], jwks={"keys": []})
    with pytest.raises(ValidationError, match="exactly one"):
        IssuerConfig(kind="oidc", issuer="x", audience="y")
    with pytest.raises(ValidationError, match="trust_domain"):
        IssuerConfig(kind="spiffe", issuer="x", audience="y", jwks={"keys": []})


def test_cli_agent_token_verifies(tmp_path: Path) -> None:
    cfg = tmp_path / "intentgate.yaml"
    cfg.write_text(f"data_dir: {tmp_path}\n")
    out = subprocess.run(
        [sys.executable, "-m", "intentgate", "agent-token", "--agent", "spiffe://example.org/agent/x", "--ttl", "15m",
         "--config", str(cfg)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    issuer = DevIssuer(KeySet(tmp_path / "keys" / "agent-issuer"))
    ident = IdentityVerifier([issuer.issuer_config()]).verify(token)
    claims = ident.claims
    assert ident.id == "spiffe://example.org/agent/x" and claims["exp"] - claims["iat"] == 900


def test_cached_identity_still_expires(dev, verifier, clock) -> None:
    token = dev.mint("spiffe://example.org/agent/a", ttl_seconds=60)
    first = verifier.verify(token)
    assert verifier.verify(token) is first  # second use served from the cache
    clock.advance(60 + 31)
    with pytest.raises(IdentityError, match="expired"):
        verifier.verify(token)
