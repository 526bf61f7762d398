"""Signing keys: Ed25519 key files on disk, JWKS publication, rotation.

All key handling lives here.  A :class:`KeySet` owns private keys in a directory, one PKCS#8
PEM file per key (mode 0600, named ``<created ms, 13 digits>-<kid>.pem``).  The newest key
signs; the JWKS publishes it together with the previous one, so tokens minted just before a
rotation still verify, and a rotation deletes every older file.  A :class:`PublicKeySet`
holds public keys only: a tool server's view, built from the gateway's JWKS.

``kid`` is the RFC 7638 JWK thumbprint (SHA-256, base64url) of the public key, so a key id
can always be recomputed from the key and never names two keys.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .clock import Clock, SystemClock
from .errors import ConfigError

__all__ = ["KeySet", "PublicKeySet", "SigningKey", "VerificationKeys", "jwk_thumbprint", "public_jwk"]

KEEP = 2  # keys kept on disk and published: current + previous
_KEY_FILE = re.compile(r"^(?P<created>\d{13})-(?P<kid>[A-Za-z0-9_-]{43})\.pem$")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def jwk_thumbprint(public: Ed25519PublicKey) -> str:
    """RFC 7638 thumbprint of an Ed25519 public key (RFC 8037 §2: members crv, kty, x)."""
    members = {"crv": "Ed25519", "kty": "OKP", "x": _b64url(_raw_public(public))}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def public_jwk(public: Ed25519PublicKey, kid: str) -> dict[str, str]:
    """The public JWK of a verification key (never any private member)."""
    return {"kty": "OKP", "crv": "Ed25519", "x": _b64url(_raw_public(public)), "kid": kid, "alg": "EdDSA", "use": "sig"}


class VerificationKeys(Protocol):
    """What a verifier needs: the public key for a ``kid``, or ``None`` if it is not trusted."""

    def get(self, kid: str) -> Ed25519PublicKey | None: ...


@dataclass(frozen=True)
class SigningKey:
    """One private key, loaded once and reused for every signature."""

    kid: str
    created: int  # epoch milliseconds
    private: Ed25519PrivateKey = field(repr=False, compare=False)
    path: Path
    public: Ed25519PublicKey = field(repr=False, compare=False)

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        """Load and check one key file; any problem is a ``ConfigError`` naming the file."""
        match = _KEY_FILE.match(path.name)
        if match is None:
            raise ConfigError(f"{path}: not a signing key file name (expected <13-digit ms>-<kid>.pem)")
        try:
            private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ConfigError(f"{path}: not a readable unencrypted PKCS#8 PEM private key ({exc})") from exc
        if not isinstance(private, Ed25519PrivateKey):
            raise ConfigError(f"{path}: not an Ed25519 private key")
        public = private.public_key()
        kid = jwk_thumbprint(public)
        if kid != match["kid"]:
            raise ConfigError(f"{path}: file name says kid {match['kid']} but the key's thumbprint is {kid}")
        return cls(kid=kid, created=int(match["created"]), private=private, path=path, public=public)


class PublicKeySet:
    """Verification keys by ``kid``, without private material."""

    def __init__(self, keys: Mapping[str, Ed25519PublicKey]) -> None:
        self._keys = dict(keys)

    def get(self, kid: str) -> Ed25519PublicKey | None:
        return self._keys.get(kid)

    def kids(self) -> list[str]:
        return list(self._keys)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [public_jwk(k, kid) for kid, k in self._keys.items()]}

    def __len__(self) -> int:
        return len(self._keys)

    @classmethod
    def from_jwks(cls, jwks: Any) -> PublicKeySet:
        """Accept only public Ed25519 (``OKP``) signing keys with distinct ``kid`` s.

        Anything else, including a key carrying private material (``d``), is a ``ConfigError``:
        a verifier silently skipping a key it cannot use would fail later and less clearly.
        """
        entries = jwks.get("keys") if isinstance(jwks, dict) else None
        if not isinstance(entries, list) or not entries:
            raise ConfigError("JWKS must be an object with a non-empty 'keys' list")
        keys: dict[str, Ed25519PublicKey] = {}
        for i, jwk in enumerate(entries):
            if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
                raise ConfigError(f"JWKS key {i}: only OKP/Ed25519 keys are accepted")
            if "d" in jwk:
                raise ConfigError(f"JWKS key {i}: holds private material ('d'); publish public keys only")
            if jwk.get("alg", "EdDSA") != "EdDSA" or jwk.get("use", "sig") != "sig":
                raise ConfigError(f"JWKS key {i}: must be an EdDSA signing key (alg EdDSA, use sig)")
            kid, x = jwk.get("kid"), jwk.get("x")
            if not isinstance(kid, str) or not kid or not isinstance(x, str):
                raise ConfigError(f"JWKS key {i}: 'kid' and 'x' must be non-empty strings")
            if kid in keys:
                raise ConfigError(f"JWKS key {i}: duplicate kid {kid!r}")
            try:
                raw = base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))
                if _b64url(raw) != x:
                    raise ValueError("x is not canonical base64url")
                keys[kid] = Ed25519PublicKey.from_public_bytes(raw)
            except (ValueError, binascii.Error, UnsupportedAlgorithm) as exc:
                raise ConfigError(f"JWKS key {i} ({kid}): invalid public key: {exc}") from exc
        return cls(keys)

    @classmethod
    def from_file(cls, path: Path | str) -> PublicKeySet:
        """Load a JWKS document (e.g. saved from the gateway's ``/.well-known/jwks.json``)."""
        try:
            document = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: cannot read JWKS: {exc}") from exc
        try:
            return cls.from_jwks(document)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc.message}") from exc


class KeySet:
    """Private signing keys in ``directory``; the newest is current.

    Keys are read once (at construction and by :meth:`reload`); signing reuses the loaded key
    objects.  A key rotated by another process (``intentgate keys rotate``) is seen after
    :meth:`reload` or a restart.
    """

    def __init__(self, directory: Path | str, *, clock: Clock | None = None, retire_public: bool = False) -> None:
        self.directory = Path(directory)
        self.clock = clock or SystemClock()
        self.retire_public = retire_public  # keep retired keys' public halves (``retired.jwks.json``)
        self._keys: list[SigningKey] = []
        self.reload()

    @classmethod
    def open_or_create(cls, directory: Path | str, *, clock: Clock | None = None,
                       retire_public: bool = False) -> KeySet:
        """Open the key directory, creating it and a first key if there is none."""
        keyset = cls(directory, clock=clock, retire_public=retire_public)
        if not keyset._keys:
            keyset.rotate()
        return keyset

    def reload(self) -> None:
        """Re-read the key files; a bad file raises ``ConfigError`` and leaves the set unchanged."""
        if not self.directory.exists():
            self._keys = []
            return
        if not self.directory.is_dir():
            raise ConfigError(f"{self.directory}: key directory is not a directory")
        keys = [SigningKey.load(path) for path in self.directory.glob("*.pem")]
        keys.sort(key=lambda k: (k.created, k.kid))
        self._keys = keys

    @property
    def current(self) -> SigningKey:
        """The key that signs."""
        if not self._keys:
            raise ConfigError(f"{self.directory}: no signing key (run `intentgate keys rotate`)")
        return self._keys[-1]

    @property
    def previous(self) -> SigningKey | None:
        """The key before the current one, still accepted for verification."""
        return self._keys[-2] if len(self._keys) >= 2 else None

    def published(self) -> list[SigningKey]:
        """Keys accepted for verification, oldest first: at most previous and current."""
        return self._keys[-KEEP:]

    def get(self, kid: str) -> Ed25519PublicKey | None:
        for key in self._keys[-KEEP:]:
            if key.kid == kid:
                return key.public
        return None

    def public_keys(self) -> PublicKeySet:
        return PublicKeySet({k.kid: k.public for k in reversed(self.published())})

    def jwks(self) -> dict[str, Any]:
        """The public JWKS: current key first, then the previous one.  No private members."""
        return {"keys": [public_jwk(k.public, k.kid) for k in reversed(self.published())]}

    def rotate(self) -> SigningKey:
        """Create a new current key; keep it and the previous one, delete older key files."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        private = Ed25519PrivateKey.generate()
        kid = jwk_thumbprint(private.public_key())
        newest = self._keys[-1].created if self._keys else -1
        created = max(int(self.clock.now() * 1000), newest + 1)
        path = self.directory / f"{created:013d}-{kid}.pem"
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write_private(path, pem)
        self.reload()
        if self.retire_public and self._keys[:-KEEP]:
            self._retire(self._keys[:-KEEP])
        _delete(k.path for k in self._keys[:-KEEP])
        self._keys = self._keys[-KEEP:]
        return self.current

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def _retired_file(self) -> Path:
        return self.directory / "retired.jwks.json"

    def retired(self) -> PublicKeySet:
        """Public keys of keys rotated out (kept with ``retire_public``: old signatures stay checkable)."""
        path = self._retired_file
        return PublicKeySet.from_file(path) if path.exists() else PublicKeySet({})

    def all_public(self) -> PublicKeySet:
        """Every public key this directory knows: published and retired."""
        retired = self.retired()  # one read of retired.jwks.json
        keys = {kid: key for kid in retired.kids() if (key := retired.get(kid)) is not None}
        keys.update({k.kid: k.public for k in self._keys})
        return PublicKeySet(keys)

    def _retire(self, keys: list[SigningKey]) -> None:
        known = self.retired().jwks()["keys"]
        seen = {k["kid"] for k in known}
        known += [public_jwk(k.public, k.kid) for k in keys if k.kid not in seen]
        _write_private(self._retired_file, json.dumps({"keys": known}, indent=2).encode())


def _write_private(path: Path, data: bytes) -> None:
    """Write a key file atomically with mode 0600: readers never see a partial key."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # the name holds a fresh key's thumbprint: nothing to overwrite
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _delete(paths: Iterable[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
