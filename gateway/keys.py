"""Signing keys: Ed25519 key files on disk, JWKS publication, rotation.

All key handling lives here.  A :class:`KeySet` owns private keys in a directory (one PKCS#8
PEM file per key, mode 0600, named ``<created>-<kid>.pem``); the newest signs, and the JWKS
publishes it together with the previous one so that tokens minted just before a rotation
still verify.  A :class:`PublicKeySet` holds public keys only (a tool server's view).
``kid`` is the RFC 7638 thumbprint of the public key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .clock import Clock, SystemClock
from .errors import ConfigError

__all__ = ["KeySet", "PublicKeySet", "SigningKey", "jwk_thumbprint"]

KEEP = 2  # current + previous


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def jwk_thumbprint(public: Ed25519PublicKey) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url) of an Ed25519 public key."""
    canonical = json.dumps(
        {"crv": "Ed25519", "kty": "OKP", "x": _b64url(_raw_public(public))}, separators=(",", ":"), sort_keys=True
    )
    return _b64url(hashlib.sha256(canonical.encode()).digest())


def public_jwk(public: Ed25519PublicKey, kid: str) -> dict[str, str]:
    return {"kty": "OKP", "crv": "Ed25519", "x": _b64url(_raw_public(public)), "kid": kid, "alg": "EdDSA", "use": "sig"}


@dataclass(frozen=True)
class SigningKey:
    kid: str
    created: int
    private: Ed25519PrivateKey
    path: Path

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()


class PublicKeySet:
    """Verification keys by ``kid``."""

    def __init__(self, keys: dict[str, Ed25519PublicKey]) -> None:
        self._keys = dict(keys)

    def get(self, kid: str) -> Ed25519PublicKey | None:
        return self._keys.get(kid)

    def kids(self) -> list[str]:
        return list(self._keys)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [public_jwk(k, kid) for kid, k in self._keys.items()]}

    @classmethod
    def from_jwks(cls, jwks: dict[str, Any]) -> PublicKeySet:
        """Accept only Ed25519 ``OKP`` keys with a ``kid``; anything else is a ``ConfigError``."""
        keys: dict[str, Ed25519PublicKey] = {}
        entries = jwks.get("keys") if isinstance(jwks, dict) else None
        if not isinstance(entries, list):
            raise ConfigError("JWKS must be an object with a 'keys' list")
        for i, jwk in enumerate(entries):
            if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
                raise ConfigError(f"JWKS key {i}: only OKP/Ed25519 keys are accepted")
            if "d" in jwk:
                raise ConfigError(f"JWKS key {i}: holds private material ('d'); publish public keys only")
            kid, x = jwk.get("kid"), jwk.get("x")
            if not isinstance(kid, str) or not kid or not isinstance(x, str):
                raise ConfigError(f"JWKS key {i}: 'kid' and 'x' are required")
            try:
                keys[kid] = Ed25519PublicKey.from_public_bytes(_b64url_decode(x))
            except (ValueError, UnsupportedAlgorithm) as exc:
                raise ConfigError(f"JWKS key {i} ({kid}): invalid public key: {exc}") from exc
        return cls(keys)

    @classmethod
    def from_file(cls, path: Path) -> PublicKeySet:
        try:
            return cls.from_jwks(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read JWKS: {exc}") from exc


class KeySet:
    """Private signing keys in ``directory``; newest is current."""

    def __init__(self, directory: Path, *, clock: Clock | None = None) -> None:
        self.directory = Path(directory)
        self.clock = clock or SystemClock()
        self._keys: list[SigningKey] = []
        self.reload()

    @classmethod
    def open_or_create(cls, directory: Path, *, clock: Clock | None = None) -> KeySet:
        keyset = cls(directory, clock=clock)
        if not keyset._keys:
            keyset.rotate()
        return keyset

    def reload(self) -> None:
        keys: list[SigningKey] = []
        if self.directory.is_dir():
            for path in sorted(self.directory.glob("*.pem")):
                try:
                    created_text, _, _ = path.stem.partition("-")
                    created = int(created_text)
                    private = serialization.load_pem_private_key(path.read_bytes(), password=None)
                except (OSError, ValueError, UnsupportedAlgorithm) as exc:
                    raise ConfigError(f"{path}: not a valid IntentGate signing key: {exc}") from exc
                if not isinstance(private, Ed25519PrivateKey):
                    raise ConfigError(f"{path}: not an Ed25519 private key")
                keys.append(SigningKey(jwk_thumbprint(private.public_key()), created, private, path))
        keys.sort(key=lambda k: (k.created, k.path.name))
        self._keys = keys

    @property
    def current(self) -> SigningKey:
        if not self._keys:
            raise ConfigError(f"{self.directory}: no signing key (run `intentgate keys rotate`)")
        return self._keys[-1]

    @property
    def previous(self) -> SigningKey | None:
        return self._keys[-2] if len(self._keys) >= 2 else None

    def published(self) -> list[SigningKey]:
        return self._keys[-KEEP:]

    def public_keys(self) -> PublicKeySet:
        return PublicKeySet({k.kid: k.public for k in self.published()})

    def get(self, kid: str) -> Ed25519PublicKey | None:
        for k in self.published():
            if k.kid == kid:
                return k.public
        return None

    def jwks(self) -> dict[str, Any]:
        return {"keys": [public_jwk(k.public, k.kid) for k in reversed(self.published())]}

    def rotate(self) -> SigningKey:
        """Create a new current key; keep current+previous, delete older key files."""
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        private = Ed25519PrivateKey.generate()
        kid = jwk_thumbprint(private.public_key())
        created = max(int(self.clock.now() * 1000), (self._keys[-1].created + 1) if self._keys else 0)
        path = self.directory / f"{created:013d}-{kid}.pem"
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        self.reload()
        for old in self._keys[:-KEEP]:
            old.path.unlink(missing_ok=True)
        self.reload()
        return self.current

    def __len__(self) -> int:
        return len(self._keys)

