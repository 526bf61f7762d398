"""Signing keys: files on disk, kid thumbprints, rotation, JWKS, the public-only key set, CLI."""

from __future__ import annotations

import base64
import json
import re
import shutil
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from intentgate.cli.keys import keys_app
from intentgate.clock import FrozenClock
from intentgate.errors import ConfigError
from intentgate.keys import KeySet, PublicKeySet, jwk_thumbprint
from tests.conftest import NOW

KEY_FILE = re.compile(r"^\d{13}-[A-Za-z0-9_-]{43}\.pem$")


def raw_x(jwk: dict) -> bytes:
    return base64.urlsafe_b64decode(jwk["x"] + "==")


def pem_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.pem"))


# ----- kid ------------------------------------------------------------------------------


def test_kid_is_the_rfc7638_thumbprint_of_rfc8037_example_key() -> None:
    # RFC 8037 appendix A.1 (key) and A.3 (its JWK thumbprint)
    d = base64.urlsafe_b64decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=")
    public = Ed25519PrivateKey.from_private_bytes(d).public_key()
    assert jwk_thumbprint(public) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


# ----- files on disk ----------------------------------------------------------------------


def test_open_or_create_makes_one_private_pkcs8_key(keyset: KeySet) -> None:
    files = pem_files(keyset.directory)
    assert [p.name for p in files] == [keyset.current.path.name]
    assert KEY_FILE.match(files[0].name) and keyset.current.kid in files[0].name
    assert files[0].read_text().startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(keyset.directory.stat().st_mode) == 0o700
    assert keyset.current.created == int(NOW * 1000)
    assert keyset.previous is None


def test_reopening_loads_the_same_key(keyset: KeySet, clock: FrozenClock) -> None:
    again = KeySet.open_or_create(keyset.directory, clock=clock)
    assert again.current.kid == keyset.current.kid and len(again) == 1
    message = b"same key"
    keyset.current.public.verify(again.current.private.sign(message), message)


def test_kid_matches_the_loaded_private_key(keyset: KeySet) -> None:
    assert keyset.current.kid == jwk_thumbprint(keyset.current.private.public_key())


def test_empty_directory_has_no_current_key(tmp_path: Path) -> None:
    keyset = KeySet(tmp_path / "nothing-yet")
    assert len(keyset) == 0 and keyset.jwks() == {"keys": []}
    with pytest.raises(ConfigError, match="no signing key"):
        _ = keyset.current


def test_rotate_keeps_current_and_previous_only(keyset: KeySet, clock: FrozenClock) -> None:
    first = keyset.current
    second = keyset.rotate()  # same frozen millisecond: creation order still strict
    assert keyset.previous == first and keyset.current == second and second.created > first.created
    third = keyset.rotate()
    assert [p.name for p in pem_files(keyset.directory)] == [second.path.name, third.path.name]
    assert not first.path.exists()
    assert keyset.get(first.kid) is None and keyset.get(second.kid) is not None
    for _ in range(3):
        clock.advance(3600)
        keyset.rotate()
    assert len(pem_files(keyset.directory)) == 2 and len(keyset) == 2
    assert not [p for p in keyset.directory.iterdir() if not p.name.endswith(".pem")]  # no temp files left


def test_rotation_is_seen_by_another_process_after_reload(keyset: KeySet, clock: FrozenClock) -> None:
    other = KeySet(keyset.directory, clock=clock)  # e.g. `intentgate keys rotate` in another process
    new = other.rotate()
    assert keyset.current.kid != new.kid
    keyset.reload()
    assert keyset.current.kid == new.kid


def test_corrupt_key_file_is_an_error_naming_the_file(keyset: KeySet) -> None:
    bad = keyset.directory / f"0000000000001-{'A' * 43}.pem"
    bad.write_text("not a key")
    with pytest.raises(ConfigError, match=re.escape(bad.name)):
        KeySet(keyset.directory)


def test_non_ed25519_key_file_is_an_error(keyset: KeySet) -> None:
    ec = generate_private_key(SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    bad = keyset.directory / f"0000000000001-{'B' * 43}.pem"
    bad.write_bytes(ec)
    with pytest.raises(ConfigError, match="not an Ed25519 private key"):
        KeySet(keyset.directory)


def test_key_file_under_another_kid_is_an_error(keyset: KeySet) -> None:
    renamed = keyset.directory / f"0000000000001-{'C' * 43}.pem"
    shutil.copy(keyset.current.path, renamed)
    with pytest.raises(ConfigError, match="thumbprint"):
        KeySet(keyset.directory)


def test_badly_named_key_file_is_an_error(keyset: KeySet) -> None:
    shutil.copy(keyset.current.path, keyset.directory / "backup.pem")
    with pytest.raises(ConfigError, match="backup.pem"):
        KeySet(keyset.directory)


def test_key_directory_that_is_a_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "keys").write_text("")
    with pytest.raises(ConfigError, match="not a directory"):
        KeySet(tmp_path / "keys")


# ----- JWKS -------------------------------------------------------------------------------


def test_jwks_has_exactly_current_and_previous_and_no_private_material(keyset: KeySet) -> None:
    first = keyset.current.kid
    second = keyset.rotate().kid
    third = keyset.rotate().kid
    jwks = keyset.jwks()
    assert [k["kid"] for k in jwks["keys"]] == [third, second]
    assert first not in json.dumps(jwks)
    for jwk in jwks["keys"]:
        assert set(jwk) == {"kty", "crv", "x", "kid", "alg", "use"}  # in particular no "d"
        assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("OKP", "Ed25519", "EdDSA", "sig")
        assert len(raw_x(jwk)) == 32


def test_jwks_keys_are_the_signing_keys(keyset: KeySet) -> None:
    keyset.rotate()
    public = PublicKeySet.from_jwks(json.loads(json.dumps(keyset.jwks())))
    assert public.kids() == [keyset.current.kid, keyset.previous.kid]  # type: ignore[union-attr]
    for key in keyset.published():
        message = b"signed by " + key.kid.encode()
        public.get(key.kid).verify(key.private.sign(message), message)  # type: ignore[union-attr]
        assert jwk_thumbprint(public.get(key.kid)) == key.kid  # type: ignore[arg-type]


def test_public_key_set_from_file(keyset: KeySet, tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(keyset.jwks()))
    assert PublicKeySet.from_file(path).kids() == [keyset.current.kid]
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="jwks.json"):
        PublicKeySet.from_file(path)
    with pytest.raises(ConfigError, match="missing.json"):
        PublicKeySet.from_file(tmp_path / "missing.json")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda k: k.update(d="c2VjcmV0"), "private material"),
        (lambda k: k.update(kty="RSA"), "OKP/Ed25519"),
        (lambda k: k.update(crv="X25519"), "OKP/Ed25519"),
        (lambda k: k.update(alg="RS256"), "EdDSA"),
        (lambda k: k.update(use="enc"), "EdDSA"),
        (lambda k: k.pop("kid"), "'kid' and 'x'"),
        (lambda k: k.update(x=k["x"][:-4]), "invalid public key"),
        (lambda k: k.update(x=k["x"] + "!!"), "invalid public key"),
    ],
)
def test_public_key_set_refuses_unusable_keys(keyset: KeySet, mutate, message: str) -> None:
    jwks = keyset.jwks()
    mutate(jwks["keys"][0])
    with pytest.raises(ConfigError, match=message):
        PublicKeySet.from_jwks(jwks)


def test_public_key_set_refuses_duplicate_kids_and_empty_sets(keyset: KeySet) -> None:
    jwk = keyset.jwks()["keys"][0]
    with pytest.raises(ConfigError, match="duplicate kid"):
        PublicKeySet.from_jwks({"keys": [jwk, dict(jwk)]})
    for document in ({"keys": []}, {"keys": "x"}, [], None):
        with pytest.raises(ConfigError, match="'keys' list"):
            PublicKeySet.from_jwks(document)


# ----- CLI --------------------------------------------------------------------------------


def test_cli_rotate_jwks_list(tmp_path: Path) -> None:
    runner = CliRunner()
    d = tmp_path / "keys"
    first = runner.invoke(keys_app, ["rotate", "--dir", str(d)])
    assert first.exit_code == 0, first.output
    kid1 = KeySet(d).current.kid
    assert kid1 in first.output
    second = runner.invoke(keys_app, ["rotate", "--dir", str(d)])
    kid2 = KeySet(d).current.kid
    assert second.exit_code == 0 and kid2 in second.output and kid1 in second.output
    jwks = runner.invoke(keys_app, ["jwks", "--dir", str(d)])
    assert jwks.exit_code == 0 and json.loads(jwks.output) == KeySet(d).jwks()
    listing = runner.invoke(keys_app, ["list", "--dir", str(d)])
    assert listing.exit_code == 0 and "current" in listing.output and "previous" in listing.output


def test_cli_reports_a_bad_key_directory(tmp_path: Path) -> None:
    d = tmp_path / "keys"
    d.mkdir()
    (d / "junk.pem").write_text("x")
    result = CliRunner().invoke(keys_app, ["jwks", "--dir", str(d)])
    assert result.exit_code == 2 and "junk.pem" in result.output
